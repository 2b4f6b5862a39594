//! A minimal HTTP/1.1 keep-alive client (what sipis's push client does to
//! the mediator): `Content-Length` bodies only. Also used by
//! `bench/src/bin/mediator_load.rs`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct Http1 {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Http1 {
    pub fn connect(addr: SocketAddr) -> Http1 {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Http1 {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends a request and reads its answer; `None` if the server closed.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Option<Reply> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: mediator\r\n");
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if let Some(b) = body {
            out.extend_from_slice(b);
        }
        self.stream.write_all(&out).ok()?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> Option<Reply> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&self.buf) {
                let status = resp.code.unwrap_or(0);
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                while self.buf.len() < n + len {
                    let r = self.stream.read(&mut chunk).ok()?;
                    if r == 0 {
                        return None;
                    }
                    self.buf.extend_from_slice(&chunk[..r]);
                }
                let body = self.buf[n..n + len].to_vec();
                self.buf.drain(..n + len);
                return Some(Reply {
                    status,
                    headers,
                    body,
                });
            }
            let r = self.stream.read(&mut chunk).ok()?;
            if r == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..r]);
        }
    }
}
