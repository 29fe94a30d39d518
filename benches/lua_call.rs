//! Per-request cost of the Lua path, without sockets: the bench's `access` script (a header
//! read and a compare) and `header_filter` script (one header write), run through the real
//! plugin and request context on a socket-less worker. Prints ns per request.
//!
//! `cargo bench --bench lua_call`

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use sluicegate_lua::harness::{FakeRequest, Harness};
use sluicegate_plugins::lua::Lua;
use sluicegate_plugins::{Phase, Plugin};

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let h = Harness::new(Default::default()).expect("harness");
        let access = Lua::new(
            Arc::new(
                sluicegate_lua::compile(
                    "auth",
                    "if ngx.var.http_x_api_key ~= \"bench-secret-key\" then\n  return ngx.exit(ngx.HTTP_UNAUTHORIZED)\nend\n",
                )
                .expect("compile"),
            ),
            Phase::Access,
        );
        let filter = Lua::new(Arc::new(sluicegate_lua::compile("mark", "ngx.header[\"X-Gateway\"] = \"lua\"\n").expect("compile")), Phase::HeaderFilter);
        let mut req = FakeRequest::default();
        req.headers.insert("x-api-key", "bench-secret-key".parse().expect("value"));
        req.headers.insert("user-agent", "wrk".parse().expect("value"));
        let n = 200_000;
        for round in 0..3 {
            let mut ctx = h.request(req.clone());
            let mut resp = http::Response::new(()).into_parts().0;
            let started = Instant::now();
            for _ in 0..n {
                let flow = access.access(&mut ctx).run().await;
                assert!(matches!(flow, Ok(sluicegate_plugins::Flow::Continue)));
                filter.header_filter(&mut ctx, &mut resp).expect("filter");
            }
            let per = started.elapsed().as_nanos() as f64 / n as f64;
            println!("round {round}: access + header_filter = {per:.0} ns per request");
        }
        let mut ctx = h.request(req.clone());
        let started = Instant::now();
        for _ in 0..n {
            let _ = access.access(&mut ctx).run().await;
        }
        println!("access alone = {:.0} ns", started.elapsed().as_nanos() as f64 / n as f64);
        let mut resp = http::Response::new(()).into_parts().0;
        let started = Instant::now();
        for _ in 0..n {
            let _ = filter.header_filter(&mut ctx, &mut resp);
        }
        println!("header_filter alone = {:.0} ns", started.elapsed().as_nanos() as f64 / n as f64);
    });
}
