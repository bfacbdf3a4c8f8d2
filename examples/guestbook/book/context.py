from . import node as node_mod


def node(request):
    return {"node": node_mod.current()}
