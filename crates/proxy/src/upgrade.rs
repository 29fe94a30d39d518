//! Handing a client connection over after `101 Switching Protocols` (WebSocket and other
//! upgrades): the connection loop writes the `101` head and then passes the stream, with any
//! bytes the client already sent past its request head, to whoever waits on [`OnUpgrade`].

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use sluicegate_http1::Rewind;

/// Any client stream (plain or TLS).
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}

/// The client's side of an upgraded connection.
pub type Upgraded = Rewind<Box<dyn ClientIo>>;

/// Put in the extensions of an upgrade request; resolves to the client's stream once the
/// `101` response has been written. (Extensions must be `Clone` and `Sync`: the receiver
/// sits behind a shared slot, and the first waiter takes it.)
#[derive(Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

/// The connection loop's end of an [`OnUpgrade`].
pub struct Pending(oneshot::Sender<Upgraded>);

/// A linked pair.
pub fn pair() -> (Pending, OnUpgrade) {
    let (tx, rx) = oneshot::channel();
    (Pending(tx), OnUpgrade(Arc::new(Mutex::new(Some(rx)))))
}

impl Pending {
    /// Hands the stream over; false when nobody waits for it any more.
    pub fn fulfil(self, io: Box<dyn ClientIo>, leftover: Bytes) -> bool {
        self.0.send(Rewind::new(io, leftover)).is_ok()
    }
}

impl OnUpgrade {
    /// The upgraded stream, or why there is none (the response was not a `101`, or the
    /// client went away before it was written).
    pub async fn wait(self) -> Result<Upgraded, &'static str> {
        let rx = self.0.lock().ok().and_then(|mut slot| slot.take());
        match rx {
            Some(rx) => rx
                .await
                .map_err(|_| "the client connection was not upgraded"),
            None => Err("the client connection was already taken"),
        }
    }
}
