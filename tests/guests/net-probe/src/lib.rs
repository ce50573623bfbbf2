//! Tries to reach the network. Body = `host:port`. `attack` metadata:
//! `tcp` (connect and send a line), `udp` (send a datagram), `bind`
//! (listen on the port). Success returns `Ok`; a refusal returns `denied`.
use kasbah_sdk::{Error, Pipeline, Request, Response};
use std::io::Write;
use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

struct NetProbe;

impl Pipeline for NetProbe {
    fn run(request: Request) -> Result<Response, Error> {
        let target = request.text()?.trim().to_string();
        let denied = |what: &str, e: std::io::Error| Error::denied(format!("{what} {target}: {e}"));
        match request.meta("attack").unwrap_or("tcp") {
            "tcp" => {
                let addrs: Vec<_> = target
                    .to_socket_addrs()
                    .map_err(|e| denied("resolve", e))?
                    .collect();
                let mut last = None;
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                        Ok(mut s) => {
                            s.write_all(b"hello from the sandbox\n")
                                .map_err(|e| denied("write", e))?;
                            return Ok(Response::text(format!("connected to {addr}")));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(match last {
                    Some(e) => denied("connect", e),
                    None => Error::denied(format!("{target}: no addresses")),
                })
            }
            "udp" => {
                let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| denied("udp bind", e))?;
                sock.send_to(b"hello", &target)
                    .map_err(|e| denied("udp send", e))?;
                Ok(Response::text(format!("sent to {target}")))
            }
            "bind" => {
                let _l = TcpListener::bind(&target).map_err(|e| denied("bind", e))?;
                Ok(Response::text(format!("listening on {target}")))
            }
            other => Err(Error::invalid_input(format!("unknown attack {other:?}"))),
        }
    }
}

kasbah_sdk::export!(NetProbe);
