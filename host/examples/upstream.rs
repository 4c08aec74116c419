//! A minimal loopback HTTP/1.1 upstream for the load test and manual runs:
//! keep-alive, answers every request with 200 and a short body that names
//! the path (`upstream METHOD PATH id=X-REQUEST-ID`).
//!
//! `cargo run --release -p nylon-host --example upstream -- 127.0.0.1:9000 [threads]`

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:9000".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            eprintln!("upstream: listening on {addr}");
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let _ = serve(stream).await;
                });
            }
        })
}

async fn serve(stream: tokio::net::TcpStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut out = Vec::with_capacity(256);
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let (mut len, mut id) = (0usize, String::new());
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if n.eq_ignore_ascii_case("x-request-id") {
                    id = v.trim().to_string();
                }
            }
        }
        if len > 0 {
            let mut body = vec![0; len];
            r.read_exact(&mut body).await?;
        }
        let body = format!("upstream {method} {path} id={id}");
        out.clear();
        out.extend_from_slice(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        w.write_all(&out).await?;
    }
}
