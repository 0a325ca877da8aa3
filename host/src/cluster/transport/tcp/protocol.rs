//! The local head's wire: a 4-byte length, then the message in postcard.
//!
//! Every connection opens with a handshake: the connecting side sends one
//! [`Hello`] frame (the [`MAGIC`], its [`PROTOCOL_VERSION`], then the hello
//! in postcard), the head answers one [`HelloReply`]. Until the token is
//! proven, the head reads frames of at most [`MAX_HELLO_FRAME`] bytes, so a
//! stranger can make it hold almost nothing. No later message can exceed
//! [`MAX_FRAME`].

use std::time::Duration;

use futures::{SinkExt, StreamExt as _};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::capabilities::provider::WorkerInfo;
use crate::cluster::messages::ClusterConfig;

/// Bumped whenever a message changes shape.
pub const PROTOCOL_VERSION: u32 = 7;

/// The first bytes of every connection's first frame: what tells a wtrace
/// peer from a stranger speaking something else.
pub const MAGIC: &[u8; 6] = b"wtrace";

/// Largest frame the head reads before the token is proven.
pub const MAX_HELLO_FRAME: usize = 16 << 10;

/// Largest frame: a lease carrying the largest component and invocation,
/// with room.
pub const MAX_FRAME: usize = 256 << 20;

/// How long a new connection has to prove it holds the token.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The first message on every connection to the head, after the magic and
/// protocol version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Hello {
    /// A worker process joining.
    Worker {
        /// The cluster's secret.
        token: String,
        /// Who the worker is.
        info: WorkerInfo,
        /// Its process id.
        pid: u32,
    },
    /// A driver (the CLI or [`crate::cluster::Client`]) connecting.
    Driver {
        /// The cluster's secret.
        token: String,
        /// Its process id.
        pid: u32,
    },
}

impl Hello {
    /// The handshake frame: magic, version, hello.
    pub fn encode(&self) -> Vec<u8> {
        let mut frame = MAGIC.to_vec();
        frame.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        frame.extend(postcard::to_allocvec(self).expect("a hello serializes"));
        frame
    }

    /// Reads a handshake frame; the error is the refusal to send back.
    pub fn decode(frame: &[u8]) -> Result<Self, String> {
        let Some(rest) = frame.strip_prefix(MAGIC.as_slice()) else {
            return Err(
                "this is a wtrace cluster, and the peer does not speak its protocol".into(),
            );
        };
        let (version, body) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| "truncated wtrace hello".to_owned())?;
        let version = u32::from_le_bytes(*version);
        if version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {version} is not this head's ({PROTOCOL_VERSION}); use the same \
                 wtrace build everywhere"
            ));
        }
        postcard::from_bytes(body).map_err(|e| format!("malformed wtrace hello: {e}"))
    }
}

/// The head's answer to a [`Hello`]. `Refused` stays the first variant in
/// every version, so a peer of another version still reads why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HelloReply {
    /// The connection is refused: wrong token, wrong version, a stranger.
    Refused(String),
    /// Accepted; the cluster's configuration.
    Welcome(Box<ClusterConfig>),
}

/// Reads length-prefixed postcard messages.
pub struct Reader<R> {
    inner: FramedRead<R, LengthDelimitedCodec>,
}

/// Writes length-prefixed postcard messages.
pub struct Writer<W> {
    inner: FramedWrite<W, LengthDelimitedCodec>,
}

impl<R> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reader")
    }
}

impl<W> std::fmt::Debug for Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec()
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads from `inner`, frames of up to [`MAX_FRAME`] bytes.
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, MAX_FRAME)
    }

    /// Reads from `inner`, frames of up to `max_frame` bytes: a longer one
    /// announced is an error at once, before any of it is buffered.
    pub fn with_limit(inner: R, max_frame: usize) -> Self {
        Self {
            inner: FramedRead::new(inner, codec(max_frame)),
        }
    }

    /// Changes the largest frame read from now on.
    pub fn set_limit(&mut self, max_frame: usize) {
        self.inner.decoder_mut().set_max_frame_length(max_frame);
    }

    /// The next frame as it came; `None` at a clean end of stream.
    pub async fn recv_frame(&mut self) -> std::io::Result<Option<tokio_util::bytes::BytesMut>> {
        self.inner.next().await.transpose()
    }

    /// The next message; `None` at a clean end of stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> std::io::Result<Option<T>> {
        match self.recv_frame().await? {
            None => Ok(None),
            Some(frame) => postcard::from_bytes(&frame).map(Some).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad message: {e}"))
            }),
        }
    }
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Writes to `inner`, frames of up to [`MAX_FRAME`] bytes.
    pub fn new(inner: W) -> Self {
        Self {
            inner: FramedWrite::new(inner, codec(MAX_FRAME)),
        }
    }

    /// Sends one frame as it is (the handshake's [`Hello`]).
    pub async fn send_frame(&mut self, frame: Vec<u8>) -> std::io::Result<()> {
        self.inner.send(tokio_util::bytes::Bytes::from(frame)).await
    }

    /// Queues a message without flushing.
    pub async fn feed<T: Serialize>(&mut self, message: &T) -> std::io::Result<()> {
        let bytes = postcard::to_allocvec(message)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        self.inner.feed(tokio_util::bytes::Bytes::from(bytes)).await
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        SinkExt::<tokio_util::bytes::Bytes>::flush(&mut self.inner).await
    }

    /// Sends one message now.
    pub async fn send<T: Serialize>(&mut self, message: &T) -> std::io::Result<()> {
        self.feed(message).await?;
        self.flush().await
    }
}

/// Why a connection to the head did not open.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Nothing answers at the address.
    Unreachable(std::io::Error),
    /// The head answered, and refused: what it said.
    Refused(String),
    /// The connection broke during the handshake.
    Lost(std::io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(e) => write!(f, "cannot connect: {e}"),
            Self::Refused(why) => write!(f, "the head refused the connection: {why}"),
            Self::Lost(e) => write!(f, "the connection broke during the handshake: {e}"),
        }
    }
}

/// A connection to the head, its handshake done.
pub(crate) type Opened = (
    Reader<tokio::net::tcp::OwnedReadHalf>,
    Writer<tokio::net::tcp::OwnedWriteHalf>,
    Box<ClusterConfig>,
);

/// Connects to the head at `addr` and says `hello`; the head's welcome
/// carries the cluster's configuration.
pub(crate) async fn open(addr: std::net::SocketAddr, hello: &Hello) -> Result<Opened, OpenError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(OpenError::Unreachable)?;
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut reader = Reader::new(read);
    let mut writer = Writer::new(write);
    writer
        .send_frame(hello.encode())
        .await
        .map_err(OpenError::Lost)?;
    match reader.recv::<HelloReply>().await {
        Ok(Some(HelloReply::Welcome(config))) => Ok((reader, writer, config)),
        Ok(Some(HelloReply::Refused(why))) => Err(OpenError::Refused(why)),
        Ok(None) => Err(OpenError::Lost(std::io::ErrorKind::UnexpectedEof.into())),
        Err(e) => Err(OpenError::Lost(e)),
    }
}

/// Writes what arrives on `rx` in bursts (one flush per burst) until `rx`
/// closes or `closed` is cancelled. A write that fails (an oversized frame,
/// a broken pipe) cancels `closed`, so the connection's reader stops too and
/// the peer sees it leave: no half-open connection.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin, T: Serialize>(
    mut writer: Writer<W>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
    closed: tokio_util::sync::CancellationToken,
    written: impl Fn(&T),
) {
    let written = async {
        while let Some(message) = rx.recv().await {
            writer.feed(&message).await?;
            written(&message);
            while let Ok(message) = rx.try_recv() {
                writer.feed(&message).await?;
                written(&message);
            }
            writer.flush().await?;
        }
        std::io::Result::Ok(())
    };
    tokio::select! {
        result = written => {
            if result.is_err() {
                closed.cancel();
            }
        }
        () = closed.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_name_what_is_wrong_with_them() {
        let hello = Hello::Driver {
            token: "t".into(),
            pid: 7,
        };
        assert!(matches!(
            Hello::decode(&hello.encode()),
            Ok(Hello::Driver { pid: 7, .. })
        ));
        let stranger = Hello::decode(b"GET / HTTP/1.1\r\n").unwrap_err();
        assert!(
            stranger.contains("does not speak its protocol"),
            "{stranger}"
        );
        let mut old = hello.encode();
        old[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&1u32.to_le_bytes());
        let version = Hello::decode(&old).unwrap_err();
        assert!(
            version.contains(&format!(
                "protocol version 1 is not this head's ({PROTOCOL_VERSION})"
            )),
            "{version}"
        );
        assert!(
            Hello::decode(b"wtrace\x02\0")
                .unwrap_err()
                .contains("truncated")
        );
    }

    #[tokio::test]
    async fn an_announced_frame_over_the_limit_fails_before_it_is_buffered() {
        let (mut ours, theirs) = tokio::io::duplex(64);
        let mut reader = Reader::with_limit(theirs, MAX_HELLO_FRAME);
        // A stranger announces a 1 GiB frame and sends four bytes of it.
        tokio::io::AsyncWriteExt::write_all(&mut ours, &[0x40, 0, 0, 0, 1, 2, 3, 4])
            .await
            .unwrap();
        let error = reader.recv_frame().await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_write_that_fails_closes_the_connection() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (ours_read, ours_write) = tokio::io::split(ours);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let closed = tokio_util::sync::CancellationToken::new();
        let writing = tokio::spawn(write_loop(
            Writer::new(ours_write),
            rx,
            closed.clone(),
            |_| {},
        ));
        // A message too large for any frame: the write fails.
        tx.send(vec![0u8; MAX_FRAME + 1]).unwrap();
        tokio::time::timeout(Duration::from_secs(5), closed.cancelled())
            .await
            .expect("the failed write cancels the connection");
        writing.await.unwrap();
        drop(ours_read);
        // The peer sees the end of the stream, not a silence.
        let mut peer = Reader::new(theirs);
        let end = tokio::time::timeout(Duration::from_secs(5), peer.recv::<Vec<u8>>()).await;
        assert!(matches!(end, Ok(Ok(None))), "{end:?}");
    }
}
