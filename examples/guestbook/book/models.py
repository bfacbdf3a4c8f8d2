from django.db import models


class Entry(models.Model):
    name = models.CharField(max_length=80)
    message = models.TextField(max_length=2000)
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    #: The hostname of the node that accepted the write (always the primary of the moment).
    node = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name_plural = "entries"

    def __str__(self) -> str:
        return f"{self.name}: {self.message[:40]}"

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "message": self.message,
            "created": self.created.isoformat(),
            "node": self.node,
        }
