//! `ngx.socket.udp()`: a connected datagram socket for DNS-style clients —
//! `setpeername`, `send`, `receive`, `settimeout`, `close` — closed with the call that
//! opened it, like the TCP cosockets.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Duration;

use mlua::{Lua, MultiValue, UserData, UserDataMethods, Value};
use sluicegate_lua::vm::Host;
use sluicegate_lua::Kinds;

use super::{fail, flatten, io_error, ms, one, DEFAULT_TIMEOUT};

/// Largest datagram `receive` returns by default (and at most).
const MAX_DATAGRAM: usize = 65536;

struct Udp {
    sock: Option<Rc<tokio::net::UdpSocket>>,
    timeout: Duration,
}

/// Closes the socket when the call that opened it ends.
struct Guard(Weak<RefCell<Udp>>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(u) = self.0.upgrade() {
            if let Ok(mut u) = u.try_borrow_mut() {
                u.sock = None;
            }
        }
    }
}

/// The Lua object of `ngx.socket.udp()`.
pub struct UdpSocket {
    udp: Rc<RefCell<Udp>>,
    host: Rc<Host>,
}

impl UdpSocket {
    pub(crate) fn new(host: &Rc<Host>) -> Self {
        UdpSocket {
            udp: Rc::new(RefCell::new(Udp {
                sock: None,
                timeout: DEFAULT_TIMEOUT,
            })),
            host: host.clone(),
        }
    }

    /// The socket, if open and owned by the running call.
    fn sock(&self) -> Result<Rc<tokio::net::UdpSocket>, &'static str> {
        let sock = self.udp.borrow().sock.clone().ok_or("closed")?;
        let cur = self.host.cur.try_borrow().map_err(|_| "bad request")?;
        let owned = cur.as_deref().is_some_and(|s| {
            s.owned.iter().any(|o| {
                o.downcast_ref::<Guard>()
                    .is_some_and(|g| std::ptr::eq(g.0.as_ptr(), Rc::as_ptr(&self.udp)))
            })
        });
        if owned {
            Ok(sock)
        } else {
            Err("bad request")
        }
    }
}

async fn setpeername(
    lua: &Lua,
    this: &UdpSocket,
    host: String,
    port: u16,
) -> mlua::Result<MultiValue> {
    let addrs = match super::resolve(&host, port).await {
        Ok(a) => a,
        Err(e) => return fail(lua, &e, None),
    };
    let Some(addr) = addrs.first().copied() else {
        return fail(lua, &format!("{host} could not be resolved"), None);
    };
    let bind: std::net::SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = match tokio::net::UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => return fail(lua, &io_error(&e), None),
    };
    if let Err(e) = sock.connect(addr).await {
        return fail(lua, &io_error(&e), None);
    }
    let guard = Guard(Rc::downgrade(&this.udp));
    this.host
        .with_req(lua, "ngx.socket.udp setpeername", Kinds::WAIT, |s| {
            s.owned.push(Box::new(guard));
            Ok(())
        })?;
    this.udp.borrow_mut().sock = Some(Rc::new(sock));
    Ok(one(Value::Integer(1)))
}

impl UserData for UdpSocket {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_async_method(
            "setpeername",
            |lua, this, (host, port): (String, Option<u16>)| async move {
                this.host.check_async(&lua, "setpeername")?;
                let Some(port) = port else {
                    return Err(sluicegate_lua::convert::error(
                        &lua,
                        "bad argument #2 to 'setpeername' (number expected)",
                    ));
                };
                this.udp.borrow_mut().sock = None;
                setpeername(&lua, &this, host, port).await
            },
        );
        m.add_async_method("send", |lua, this, data: Value| async move {
            this.host.check_async(&lua, "send")?;
            let mut bytes = Vec::new();
            flatten(&lua, &data, &mut bytes, 0)?;
            let sock = match this.sock() {
                Ok(s) => s,
                Err(e) => return fail(&lua, e, None),
            };
            let timeout = this.udp.borrow().timeout;
            match tokio::time::timeout(timeout, sock.send(&bytes)).await {
                Ok(Ok(_)) => Ok(one(Value::Integer(1))),
                Ok(Err(e)) => fail(&lua, &io_error(&e), None),
                Err(_) => fail(&lua, "timeout", None),
            }
        });
        m.add_async_method("receive", |lua, this, size: Option<f64>| async move {
            this.host.check_async(&lua, "receive")?;
            let size = size.map_or(MAX_DATAGRAM, |s| (s.max(1.0) as usize).min(MAX_DATAGRAM));
            let sock = match this.sock() {
                Ok(s) => s,
                Err(e) => return fail(&lua, e, None),
            };
            let timeout = this.udp.borrow().timeout;
            let mut buf = vec![0u8; size];
            match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
                Ok(Ok(n)) => Ok(one(Value::String(lua.create_string(&buf[..n])?))),
                Ok(Err(e)) => fail(&lua, &io_error(&e), None),
                Err(_) => fail(&lua, "timeout", None),
            }
        });
        m.add_method("settimeout", |_, this, t: Option<f64>| {
            this.udp.borrow_mut().timeout = ms(t);
            Ok(())
        });
        m.add_method("close", |lua, this, ()| match this.sock() {
            Ok(_) => {
                this.udp.borrow_mut().sock = None;
                Ok(one(Value::Integer(1)))
            }
            Err(e) => fail(lua, e, None),
        });
    }
}
