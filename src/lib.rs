//! Sluicegate: a programmable edge gateway. See `docs/architecture.md` for how the pieces
//! fit: `config` builds a `state::Snapshot`, `server` runs worker threads that hand each
//! request to the `proxy` phase driver, which runs `plugins` and forwards to `upstream`s.

/// Implements `AsyncWrite` for a wrapper `$ty<T>` by passing every call to its `$field`
/// (the wrappers that only add behaviour to reads: `http1::Rewind`, `server::conn::ConnIo`).
macro_rules! pass_async_write {
    ($ty:ident, $field:ident) => {
        impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<T> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().$field).poll_shutdown(cx)
            }
        }
    };
}

pub mod admin;
pub mod cli;
pub mod code;
pub mod config;
pub mod http1;
pub mod lua;
pub mod plugins;
pub mod prehashed;
pub mod proxy;
pub mod queue;
pub mod secrets;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod upstream;
