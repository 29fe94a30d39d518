//! The server: worker threads, each with its own runtime, accept loop and `SO_REUSEPORT`
//! listener sockets; the client connection's I/O and timeouts; the built-in HTTP/1.1 server
//! loop and hyper's HTTP/2; TLS listeners; and the services a worker's scripts call.
//! Every request goes to the data plane's phase driver (`sluicegate_proxy::handle`).
//! Binding the sockets and starting the threads is the application's `Gateway`.

pub mod conn;
pub mod h1;
pub mod park;
pub mod services;
pub mod tls;
pub mod worker;
