//! A blocking HTTP client for the APIs the tests call on loopback: litefs-py's status,
//! management and test fault layer, its lease API, LiteFS's own. A real client (ureq), not a
//! request written by hand on a socket; every call has a bound.

use std::time::Duration;

use crate::error::{Error, Result};

/// What a call answered, whatever the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// The bound of one call of [`request`] and [`get`].
pub const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
}

impl Client {
    /// A client whose every call (connect, send, read) ends within `timeout`.
    pub fn new(timeout: Duration) -> Client {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // A 4xx/5xx is an answer the tests look at, not an error.
            .http_status_as_error(false)
            // Loopback only: no proxy from the environment.
            .proxy(None)
            .build();
        Client {
            agent: config.into(),
        }
    }

    /// `method http://addr path`, with a bearer token and a JSON body if given.
    pub fn request(
        &self,
        method: &str,
        addr: &str,
        path: &str,
        bearer: Option<&str>,
        json: Option<&str>,
    ) -> Result<Response> {
        let url = format!("http://{addr}{path}");
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(token) = bearer {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        if json.is_some() {
            req = req.header("Content-Type", "application/json");
        }
        let req = req
            .body(json.unwrap_or("").to_string())
            .map_err(|e| Error::failed(format!("{method} {url}: {e}")))?;
        let mut resp = self
            .agent
            .run(req)
            .map_err(|e| Error::failed(format!("{method} {url}: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| Error::failed(format!("{method} {url}: reading the body: {e}")))?;
        Ok(Response { status, body })
    }

    pub fn get(&self, addr: &str, path: &str) -> Result<Response> {
        self.request("GET", addr, path, None, None)
    }
}

fn default_client() -> &'static Client {
    static CLIENT: std::sync::OnceLock<Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| Client::new(TIMEOUT))
}

/// [`Client::request`] with the default bound.
pub fn request(
    method: &str,
    addr: &str,
    path: &str,
    bearer: Option<&str>,
    json: Option<&str>,
) -> Result<Response> {
    default_client().request(method, addr, path, bearer, json)
}

/// `GET`, with the default bound.
pub fn get(addr: &str, path: &str) -> Result<Response> {
    default_client().get(addr, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// One real exchange against a listener that answers once.
    #[test]
    fn sends_method_auth_and_body_and_reads_any_status() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&req).contains("{\"a\":1}") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0);
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope",
            )
            .unwrap();
            String::from_utf8_lossy(&req).into_owned()
        });
        let r = request("PUT", &addr, "/test/faults", Some("s3"), Some("{\"a\":1}")).unwrap();
        assert_eq!(
            r,
            Response {
                status: 401,
                body: "nope".into()
            }
        );
        let req = server.join().unwrap();
        assert!(req.starts_with("PUT /test/faults HTTP/1.1\r\n"), "{req}");
        assert!(
            req.to_ascii_lowercase()
                .contains("authorization: bearer s3"),
            "{req}"
        );
    }

    #[test]
    fn nothing_listening_is_an_error_within_the_bound() {
        let port = crate::ports::free_port().unwrap();
        let t = std::time::Instant::now();
        assert!(
            Client::new(Duration::from_millis(300))
                .get(&format!("127.0.0.1:{port}"), "/")
                .is_err()
        );
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}
