//! Envoy filter scripts in-process: the global-variable leak of Envoy's filter cannot
//! happen (globals live for one call), and a hook's handle is refused after the hook.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluicegate_core::phase::{Flow, Plugin};
use sluicegate_lua::harness::{FakeRequest, Harness};
use sluicegate_lua::LuaSettings;

mod support;
use support::{filter, run};

#[test]
fn a_global_assigned_on_every_request_does_not_grow_the_vm() {
    run(async {
        let h = Harness::new(LuaSettings::default()).unwrap();
        let p = filter(
            "function envoy_on_request(handle)\n\
               _G['seen_' .. math.random()] = { path = handle:headers():get(':path') }\n\
               leaked = (leaked or 0) + 1\n\
               if leaked ~= 1 then error('a global survived its call: ' .. leaked) end\n\
             end",
        );
        let mut ctx = h.request(FakeRequest::default());
        for _ in 0..2_000 {
            assert!(matches!(p.access(&mut ctx).run().await, Ok(Flow::Continue)));
        }
        let vm = h.worker.lua.vm().unwrap().clone();
        vm.lua.gc_collect().unwrap();
        let after_warmup = vm.used_memory();
        for _ in 0..20_000 {
            assert!(matches!(p.access(&mut ctx).run().await, Ok(Flow::Continue)));
        }
        vm.lua.gc_collect().unwrap();
        let grown = vm.used_memory().saturating_sub(after_warmup);
        assert!(grown < 64 * 1024, "the VM grew by {grown} bytes");
    });
}

#[test]
fn top_level_code_runs_once_per_worker_and_hook_globals_live_for_one_call() {
    run(async {
        let h = Harness::new(LuaSettings::default()).unwrap();
        let p = filter(
            "loads = (loads or 0) + 1\n\
             local seen = {}\n\
             function helper(x) return x .. '!' end\n\
             function envoy_on_request(handle)\n\
               seen[#seen + 1] = true\n\
               per_call = (per_call or 0) + 1\n\
               handle:headers():replace('x-out', helper(loads .. ' ' .. #seen .. ' ' .. per_call))\n\
             end",
        );
        let mut out = Vec::new();
        for _ in 0..3 {
            let mut ctx = h.request(FakeRequest::default());
            assert!(matches!(p.access(&mut ctx).run().await, Ok(Flow::Continue)));
            out.push(ctx.head.headers["x-out"].to_str().unwrap().to_string());
        }
        assert_eq!(out, ["1 1 1!", "1 2 1!", "1 3 1!"]);
    });
}

#[test]
fn respond_ends_the_hook_and_answers() {
    run(async {
        let h = Harness::new(LuaSettings::default()).unwrap();
        let p = filter(
            "function envoy_on_request(handle)\n\
               pcall(function() handle:respond({[':status'] = '418', ['x-why'] = 'tea'}, 'short and stout') end)\n\
               handle:headers():add('x-after', 'ran')\n\
             end",
        );
        let mut ctx = h.request(FakeRequest::default());
        match p.access(&mut ctx).run().await {
            Ok(Flow::Respond(r)) => {
                assert_eq!(r.status, 418);
                assert_eq!(r.headers["x-why"], "tea");
                assert_eq!(&r.body[..], b"short and stout");
            }
            other => panic!("expected a response, got {other:?}"),
        }
        assert!(
            ctx.head.headers.get("x-after").is_none(),
            "code after respond ran"
        );
    });
}

#[test]
fn a_hook_that_assigns_a_new_hook_is_replaced_for_later_calls() {
    run(async {
        let h = Harness::new(LuaSettings::default()).unwrap();
        let p = filter(
            "function envoy_on_request(handle)\n\
               handle:headers():replace('x-hook', 'first')\n\
               envoy_on_request = function(again)\n\
                 again:headers():replace('x-hook', 'second')\n\
               end\n\
             end",
        );
        let mut out = Vec::new();
        for _ in 0..3 {
            let mut ctx = h.request(FakeRequest::default());
            assert!(matches!(p.access(&mut ctx).run().await, Ok(Flow::Continue)));
            out.push(ctx.head.headers["x-hook"].to_str().unwrap().to_string());
        }
        assert_eq!(out, ["first", "second", "second"]);
    });
}
