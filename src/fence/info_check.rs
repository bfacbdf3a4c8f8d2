//! The fencer's one question to LiteFS, `GET /info`: "are you primary?", over a raw loopback
//! socket with a deadline, in the forked fencer. Only syscalls on a stack buffer and what
//! [`Request::new`] prepared before the fork: no allocation, no locks (a child of a
//! multi-threaded process may make only async-signal-safe calls).

use std::net::SocketAddr;

/// What LiteFS said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Primary,
    NotPrimary,
    /// No answer in time, or one that does not say.
    Unknown,
}

/// The address and the request bytes, prepared before the fork.
pub struct Request {
    addr: libc::sockaddr_storage,
    addr_len: libc::socklen_t,
    family: libc::c_int,
}

/// HTTP/1.0: LiteFS's Go server closes the connection after its answer, so reading to EOF
/// reads it whole.
const GET_INFO: &[u8] = b"GET /info HTTP/1.0\r\nHost: litefs\r\nAccept: application/json\r\n\r\n";

impl Request {
    pub fn new(addr: SocketAddr) -> Request {
        // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (empty) value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let (len, family) = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
                (std::mem::size_of::<libc::sockaddr_in>(), libc::AF_INET)
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
                (std::mem::size_of::<libc::sockaddr_in6>(), libc::AF_INET6)
            }
        };
        Request {
            addr: storage,
            addr_len: len as libc::socklen_t,
            family,
        }
    }

    /// Asks, and waits at most `timeout_ms` in all. Async-signal-safe.
    pub fn ask(&self, timeout_ms: i32) -> Answer {
        let mut buf = [0u8; 8192];
        // SAFETY: syscalls on a socket this function owns and closes, and on stack buffers.
        unsafe {
            let fd = libc::socket(
                self.family,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            );
            if fd < 0 {
                return Answer::Unknown;
            }
            let n = exchange(fd, self, timeout_ms, &mut buf);
            libc::close(fd);
            match n {
                Some(n) => parse(&buf[..n]).map_or(Answer::Unknown, |p| {
                    if p {
                        Answer::Primary
                    } else {
                        Answer::NotPrimary
                    }
                }),
                None => Answer::Unknown,
            }
        }
    }
}

/// CLOCK_BOOTTIME in milliseconds (the deadline of one exchange).
fn now_ms() -> i64 {
    (super::boottime_ns() / 1_000_000) as i64
}

/// Waits for `events` on `fd` until `deadline` (ms, BOOTTIME). Async-signal-safe.
unsafe fn wait(fd: libc::c_int, events: libc::c_short, deadline: i64) -> bool {
    loop {
        let left = deadline - now_ms();
        if left <= 0 {
            return false;
        }
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, left.min(i64::from(i32::MAX)) as i32) };
        if r > 0 {
            return true;
        }
        // SAFETY: reading errno.
        if r < 0 && unsafe { *libc::__errno_location() } != libc::EINTR {
            return false;
        }
    }
}

/// Connects, sends the request, reads the answer to EOF into `buf`; the bytes read.
unsafe fn exchange(
    fd: libc::c_int,
    req: &Request,
    timeout_ms: i32,
    buf: &mut [u8],
) -> Option<usize> {
    let deadline = now_ms() + i64::from(timeout_ms);
    // SAFETY: (all below) syscalls on the caller's socket, with the prepared address and
    // buffers of the given lengths.
    unsafe {
        if libc::connect(fd, (&raw const req.addr).cast(), req.addr_len) != 0 {
            if *libc::__errno_location() != libc::EINPROGRESS || !wait(fd, libc::POLLOUT, deadline)
            {
                return None;
            }
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut err).cast(),
                &mut len,
            );
            if err != 0 {
                return None;
            }
        }
        let mut sent = 0;
        while sent < GET_INFO.len() {
            let n = libc::send(
                fd,
                GET_INFO[sent..].as_ptr().cast(),
                GET_INFO.len() - sent,
                libc::MSG_NOSIGNAL,
            );
            if n > 0 {
                sent += n as usize;
            } else if n < 0 && *libc::__errno_location() == libc::EAGAIN {
                if !wait(fd, libc::POLLOUT, deadline) {
                    return None;
                }
            } else {
                return None;
            }
        }
        let mut filled = 0;
        loop {
            if filled == buf.len() {
                return Some(filled);
            }
            let n = libc::recv(fd, buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0);
            if n > 0 {
                filled += n as usize;
            } else if n == 0 {
                return Some(filled);
            } else if *libc::__errno_location() == libc::EAGAIN {
                if !wait(fd, libc::POLLIN, deadline) {
                    return None;
                }
            } else {
                return None;
            }
        }
    }
}

/// `isPrimary` from an HTTP answer of `GET /info`: `None` unless it is a 200 whose body has
/// `"isPrimary"` followed by `true` or `false`. No allocation.
pub fn parse(answer: &[u8]) -> Option<bool> {
    let status_ok = answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200");
    if !status_ok {
        return None;
    }
    let key = b"\"isPrimary\"";
    let at = answer.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &answer[at..];
    let rest = &rest[rest.iter().position(|b| !b" \t\r\n".contains(b))?..];
    let rest = rest.strip_prefix(b":")?;
    let rest = &rest[rest.iter().position(|b| !b" \t\r\n".contains(b))?..];
    if rest.starts_with(b"true") {
        Some(true)
    } else if rest.starts_with(b"false") {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_primary_is_read_from_a_200_only() {
        let ok =
            |body: &str| format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}");
        assert_eq!(
            parse(ok(r#"{"clusterID":"LFSC1","isPrimary":true,"candidate":true}"#).as_bytes()),
            Some(true)
        );
        assert_eq!(
            parse(ok("{\n  \"isPrimary\" : false,\n  \"primary\": {}}").as_bytes()),
            Some(false)
        );
        assert_eq!(parse(ok(r#"{"candidate":true}"#).as_bytes()), None);
        assert_eq!(parse(ok(r#"{"isPrimary":null}"#).as_bytes()), None);
        assert_eq!(
            parse(b"HTTP/1.1 500 Internal Server Error\r\n\r\n{\"isPrimary\":false}"),
            None
        );
        assert_eq!(parse(b""), None);
    }

    #[test]
    fn nothing_listening_is_no_answer() {
        // A port that was just free: connecting is refused at once.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert_eq!(Request::new(addr).ask(1000), Answer::Unknown);
    }

    #[test]
    fn a_real_answer_is_read() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 512];
            let n = s.read(&mut req).unwrap();
            assert!(req[..n].starts_with(b"GET /info HTTP/1.0\r\n"));
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\n{\"isPrimary\":false}")
                .unwrap();
        });
        assert_eq!(Request::new(addr).ask(5000), Answer::NotPrimary);
        server.join().unwrap();
    }
}
