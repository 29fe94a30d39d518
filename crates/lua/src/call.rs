//! A script call as a future ([`AsyncCall`]) — rewrite, access and content scripts that can
//! wait, and timer runs — and the translation of mlua errors into [`Failure`]s carrying
//! `name:line:` ([`classify`]).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::state::ReqState;
use super::vm::{Done, Instance, Vm};
use super::{budget, Failure, FailureKind, Kind};

/// A script call in progress; polling it runs the script until it waits or ends.
pub struct AsyncCall {
    pub(super) vm: Rc<Vm>,
    pub(super) inst: Rc<Instance>,
    pub(super) kind: Kind,
    pub(super) fut: mlua::function::AsyncCallFuture<()>,
    pub(super) state: Option<Box<ReqState>>,
    pub(super) remaining: Duration,
    pub(super) done: bool,
}

impl AsyncCall {
    /// Polls once with a no-op waker: most calls finish without waiting, and then need no
    /// boxed future. A call that is still pending must be polled again with a real waker.
    pub fn poll_now(&mut self) -> Option<Done> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_call(&mut cx) {
            Poll::Ready(d) => Some(d),
            Poll::Pending => None,
        }
    }

    fn poll_call(&mut self, cx: &mut Context<'_>) -> Poll<Done> {
        if self.done {
            return Poll::Ready(Done {
                result: Ok(()),
                state: self.state.take().unwrap_or_default(),
            });
        }
        let vm = self.vm.clone();
        let saved = vm.swap_in(self.kind, self.state.take(), &self.inst, true);
        let armed = budget::arm(self.remaining, vm.soft_limit());
        let polled = Pin::new(&mut self.fut).poll(cx);
        if polled.is_pending() {
            // Only a call that waits needs what is left for its next poll: a call that
            // finishes in one poll (the usual case) saves a clock read.
            self.remaining = self.remaining.saturating_sub(armed.elapsed());
        }
        drop(armed);
        self.state = vm.swap_out(saved);
        let result = match polled {
            Poll::Pending => {
                if self.state.as_ref().is_some_and(|s| s.out.exit.is_some()) {
                    Ok(())
                } else {
                    return Poll::Pending;
                }
            }
            Poll::Ready(Ok(())) => Ok(()),
            Poll::Ready(Err(e)) => Err(classify(&e, &self.inst.name)),
        };
        self.done = true;
        vm.leave(&self.inst, &result);
        Poll::Ready(Done {
            result,
            state: self.state.take().unwrap_or_default(),
        })
    }
}

impl Future for AsyncCall {
    type Output = Done;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        self.get_mut().poll_call(cx)
    }
}

impl Drop for AsyncCall {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            self.vm.leave(&self.inst, &Ok(()));
        }
    }
}

/// Turns an mlua error into a failure with `name:line: message`.
pub fn classify(e: &mlua::Error, name: &str) -> Failure {
    let message = message_of(e, name);
    let kind = if message.contains(budget::OVER_BUDGET) {
        FailureKind::CpuBudget
    } else if message.contains(budget::OVER_MEMORY) || is_memory(e) {
        FailureKind::MemoryLimit
    } else {
        FailureKind::Error
    };
    let message = match kind {
        FailureKind::MemoryLimit if !message.contains("memory") => {
            format!("{message} (memory limit reached)")
        }
        _ => message,
    };
    Failure { kind, message }
}

fn is_memory(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory(cause),
        mlua::Error::WithContext { cause, .. } => is_memory(cause),
        mlua::Error::RuntimeError(m) => m.contains("not enough memory"),
        _ => false,
    }
}

fn message_of(e: &mlua::Error, name: &str) -> String {
    match e {
        mlua::Error::RuntimeError(m) => {
            let first = first_line(m);
            // Errors raised by the interrupt carry no position; the traceback has it.
            match locate(m, name) {
                Some(at) if !first.starts_with(&format!("{name}:")) => format!("{at} {first}"),
                _ => first,
            }
        }
        mlua::Error::MemoryError(m) => format!("{name}: memory limit reached ({})", first_line(m)),
        mlua::Error::CallbackError { traceback, cause } => {
            let inner = message_of(cause, name);
            if inner.starts_with(&format!("{name}:")) {
                inner
            } else {
                match locate(traceback, name) {
                    Some(at) => format!("{at} {inner}"),
                    None => format!("{name}: {inner}"),
                }
            }
        }
        mlua::Error::WithContext { cause, .. } => message_of(cause, name),
        other => first_line(&other.to_string()),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// The first `name:LINE:` frame of a traceback.
fn locate(traceback: &str, name: &str) -> Option<String> {
    let prefix = format!("{name}:");
    traceback.lines().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix(&prefix)?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        (!digits.is_empty()).then(|| format!("{name}:{digits}:"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_script_line_in_a_traceback() {
        let tb = "stack traceback:\n\t[C]: in function 'ngx.say'\n\tauth:7: in main chunk";
        assert_eq!(locate(tb, "auth").as_deref(), Some("auth:7:"));
        assert_eq!(locate(tb, "other"), None);
    }
}
