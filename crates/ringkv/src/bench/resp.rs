//! A minimal RESP2 client for the benchmark: one connection, one command at a time.
//!
//! Enough of the protocol for GET, SET, GETCTX and PUTCTX: commands are sent as arrays of
//! bulk strings, replies parsed into [`Reply`]. Every reply is bounded: bulk strings by
//! `MAX_BULK_BYTES`, arrays by `MAX_ARRAY_LEN` and nesting by `MAX_DEPTH`.

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest bulk string accepted in a reply (the node's own value limit is 1 MiB).
const MAX_BULK_BYTES: usize = 16 * 1024 * 1024;
/// Most elements of one array reply (GETCTX answers the context and the siblings).
const MAX_ARRAY_LEN: usize = 4096;
/// Deepest nesting of arrays in a reply.
const MAX_DEPTH: usize = 2;
/// Longest header line (`$123\r\n`, `+OK\r\n`, `-ERR ...\r\n`).
const MAX_LINE_BYTES: usize = 4096;

/// A parsed RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// One RESP connection.
pub struct RespConnection {
    stream: BufReader<TcpStream>,
    out: Vec<u8>,
}

impl RespConnection {
    pub async fn connect(addr: &str) -> anyhow::Result<RespConnection> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        Ok(RespConnection {
            stream: BufReader::new(tcp),
            out: Vec::with_capacity(256),
        })
    }

    /// Sends one command and reads its reply.
    pub async fn command(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        self.out.clear();
        encode_command(&mut self.out, args);
        self.stream.get_mut().write_all(&self.out).await?;
        read_reply(&mut self.stream, 0).await
    }
}

/// Appends `args` to `out` as a RESP array of bulk strings.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

async fn read_line(stream: &mut BufReader<TcpStream>) -> anyhow::Result<String> {
    let mut line = Vec::new();
    let n = (&mut *stream)
        .take(MAX_LINE_BYTES as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        bail!("connection closed");
    }
    if !line.ends_with(b"\r\n") {
        bail!("reply line not terminated by CRLF within {MAX_LINE_BYTES} bytes");
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn read_reply(
    stream: &mut BufReader<TcpStream>,
    depth: usize,
) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<Reply>> + Send + '_>> {
    Box::pin(async move {
        let line = read_line(stream).await?;
        let (kind, rest) = line.split_at(line.len().min(1));
        match kind {
            "+" => Ok(Reply::Simple(rest.to_string())),
            "-" => Ok(Reply::Error(rest.to_string())),
            ":" => Ok(Reply::Integer(rest.parse()?)),
            "$" => read_bulk(stream, rest.parse()?).await,
            "*" => {
                let len: i64 = rest.parse()?;
                if len < 0 {
                    return Ok(Reply::Array(None));
                }
                if len as usize > MAX_ARRAY_LEN || depth >= MAX_DEPTH {
                    bail!("array reply of {len} elements at depth {depth} is over the limits");
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(read_reply(stream, depth + 1).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            _ => bail!("unexpected reply line {line:?}"),
        }
    })
}

async fn read_bulk(stream: &mut BufReader<TcpStream>, len: i64) -> anyhow::Result<Reply> {
    if len < 0 {
        return Ok(Reply::Bulk(None));
    }
    if len as usize > MAX_BULK_BYTES {
        bail!("bulk reply of {len} bytes is over {MAX_BULK_BYTES}");
    }
    let mut data = vec![0u8; len as usize + 2];
    stream.read_exact(&mut data).await?;
    if !data.ends_with(b"\r\n") {
        bail!("bulk reply not terminated by CRLF");
    }
    data.truncate(len as usize);
    Ok(Reply::Bulk(Some(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", b"v\r\n"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n");
    }

    #[tokio::test]
    async fn replies_parse_from_a_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let replies: [&[u8]; 4] = [
                b"+OK\r\n",
                b"$-1\r\n",
                b"*3\r\n$3\r\nctx\r\n$2\r\nv1\r\n$0\r\n\r\n",
                b"-CONFLICT 2 siblings, use GETCTX\r\n",
            ];
            for reply in replies {
                let _ = sock.read(&mut buf).await.unwrap();
                sock.write_all(reply).await.unwrap();
            }
        });
        let mut conn = RespConnection::connect(&addr).await.unwrap();
        assert_eq!(
            conn.command(&[b"SET", b"k", b"v"]).await.unwrap(),
            Reply::Simple("OK".into())
        );
        assert_eq!(
            conn.command(&[b"GET", b"x"]).await.unwrap(),
            Reply::Bulk(None)
        );
        assert_eq!(
            conn.command(&[b"GETCTX", b"k"]).await.unwrap(),
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"ctx".to_vec())),
                Reply::Bulk(Some(b"v1".to_vec())),
                Reply::Bulk(Some(Vec::new())),
            ]))
        );
        assert_eq!(
            conn.command(&[b"GET", b"k"]).await.unwrap(),
            Reply::Error("CONFLICT 2 siblings, use GETCTX".into())
        );
        server.await.unwrap();
    }
}
