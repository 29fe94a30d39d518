//! The stream handle in-process, on one worker VM: the header calls answered in C agree
//! with their Rust methods on every case either takes (one value, several values, missing
//! names, names in any case, pseudo-headers, numbers, invalid names and values, both
//! directions); a handle kept past its hook is refused by every method; a method called
//! with `.` names the mistake; and no script can change the handle's type.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluicegate_core::phase::{Flow, Plugin};
use sluicegate_lua::harness::{FakeRequest, Harness};
use sluicegate_lua::LuaSettings;

mod support;
use support::{filter, run};

fn header(headers: &http::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no header {name} in {headers:?}"))
}

#[test]
fn request_header_calls_agree_with_envoy_on_every_case() {
    run(async {
        let h = Harness::new(LuaSettings::default()).unwrap();
        let p = filter(
            r#"
function envoy_on_request(h)
  local hs = h:headers()
  local function try(f) local ok, e = pcall(f) return ok and "ok" or (tostring(e):gsub("\n", "|")) end
  hs:add("x-got-multi", hs:get("x-multi"))
  hs:add("x-got-one", hs:get("X-One"))
  hs:add("x-got-missing", tostring(hs:get("x-none")))
  hs:add("x-got-path", hs:get(":path"))
  hs:add("x-got-upper-path", tostring(hs:get(":PATH")))
  hs:add("x-got-method", hs:get(":method"))
  hs:add("x-got-authority", hs:get(":authority"))
  hs:add("x-got-scheme", hs:get(":scheme"))
  hs:add("x-got-unknown-pseudo", tostring(hs:get(":nope")))
  hs:add("x-num", 5)
  hs:add("x-twice", "1")
  hs:add("x-twice", "2")
  hs:replace("x-one", "2")
  hs:remove("x-multi")
  hs:remove("x-never-there")
  hs:remove(":path")
  hs:add("x-bad-name", try(function() hs:add("bad name", "v") end))
  hs:add("x-bad-value", try(function() hs:add("x-v", "a\nb") end))
  hs:add("x-nil-value", try(function() hs:add("x-v", nil) end))
  hs:add("x-number-name", try(function() return hs:get(7) end))
  hs:replace(":method", "POST")
end
"#,
        );
        let mut headers = http::HeaderMap::new();
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", "b".parse().unwrap());
        headers.insert("x-one", "1".parse().unwrap());
        headers.insert("host", "example.com".parse().unwrap());
        let mut ctx = h.request(FakeRequest {
            uri: "/p?q=1".parse().unwrap(),
            headers,
            ..FakeRequest::default()
        });
        let r = p.access(&mut ctx).run().await;
        assert!(matches!(r, Ok(Flow::Continue)), "{r:?}");
        let got = &ctx.head.headers;
        assert_eq!(header(got, "x-got-multi"), "a,b", "several values joined");
        assert_eq!(header(got, "x-got-one"), "1", "names in any case");
        assert_eq!(header(got, "x-got-missing"), "nil");
        assert_eq!(header(got, "x-got-path"), "/p?q=1");
        assert_eq!(header(got, "x-got-upper-path"), "/p?q=1");
        assert_eq!(header(got, "x-got-method"), "GET");
        assert_eq!(header(got, "x-got-authority"), "example.com");
        assert_eq!(header(got, "x-got-scheme"), "http");
        assert_eq!(header(got, "x-got-unknown-pseudo"), "nil");
        assert_eq!(header(got, "x-num"), "5", "numbers are taken as their text");
        let twice: Vec<_> = got.get_all("x-twice").iter().collect();
        assert_eq!(twice, ["1", "2"], "add appends");
        assert_eq!(header(got, "x-one"), "2", "replace");
        assert!(got.get("x-multi").is_none(), "remove takes every value");
        assert_eq!(
            ctx.head.uri, "/p?q=1",
            "removing a pseudo-header does nothing"
        );
        assert!(
            header(got, "x-bad-name").contains("filter:21: invalid header name `bad name`"),
            "{got:?}"
        );
        assert!(
            header(got, "x-bad-value").contains("filter:22: invalid value for header `x-v`"),
            "{got:?}"
        );
        assert!(
            header(got, "x-nil-value").contains("the value must be a string"),
            "{got:?}"
        );
        assert_eq!(header(got, "x-number-name"), "ok");
        assert!(got.get("x-v").is_none(), "a refused write changes nothing");
        assert_eq!(ctx.head.method, http::Method::POST, "pseudo-header write");
    });
}

#[test]
fn authority_without_host_is_the_targets_on_both_paths() {
    run(async {
        let h = Harness::new(LuaSettings::default()).unwrap();
        let p = filter(
            r#"
function envoy_on_request(h)
  local hs = h:headers()
  local listed
  for k, v in pairs(hs) do if k == ":authority" then listed = v end end
  hs:add("x-got", hs:get(":authority"))
  hs:add("x-listed", tostring(listed))
  hs:add("x-upper", hs:get(":Authority"))
end
"#,
        );
        let mut ctx = h.request(FakeRequest {
            uri: "http://target.example:8080/p".parse().unwrap(),
            headers: http::HeaderMap::new(),
            ..FakeRequest::default()
        });
        let r = p.access(&mut ctx).run().await;
        assert!(matches!(r, Ok(Flow::Continue)), "{r:?}");
        let got = &ctx.head.headers;
        assert_eq!(header(got, "x-got"), "target.example:8080", "the C path");
        assert_eq!(
            header(got, "x-upper"),
            "target.example:8080",
            "the Rust path"
        );
        assert_eq!(header(got, "x-listed"), "target.example:8080", "pairs");
    });
}

#[test]
fn response_header_calls_read_and_write_the_response() {
    run(async {
        let h = Harness::new(LuaSettings::default()).unwrap();
        let p = filter(
            r#"
function envoy_on_response(h)
  local hs = h:headers()
  hs:add("x-status", hs:get(":status"))
  hs:add("x-up-seen", hs:get("x-up"))
  hs:add("x-path", tostring(hs:get(":path")))
  hs:replace("x-up", "changed")
  hs:remove("x-gone")
  hs:replace(":status", "202")
end
"#,
        );
        let mut ctx = h.request(FakeRequest::default());
        let (mut resp, ()) = http::Response::builder()
            .status(201)
            .header("x-up", "from upstream")
            .header("x-gone", "1")
            .body(())
            .unwrap()
            .into_parts();
        p.header_filter(&mut ctx, &mut resp).unwrap();
        let got = &resp.headers;
        assert_eq!(header(got, "x-status"), "201");
        assert_eq!(header(got, "x-up-seen"), "from upstream");
        assert_eq!(
            header(got, "x-path"),
            "nil",
            "no request pseudo-headers here"
        );
        assert_eq!(header(got, "x-up"), "changed");
        assert!(got.get("x-gone").is_none());
        assert_eq!(resp.status, 202);
    });
}

#[test]
fn a_handle_kept_past_its_hook_is_refused_by_every_method() {
    run(async {
        let h = Harness::new(LuaSettings::default()).unwrap();
        let p = filter(
            r#"
local kept = {}
function envoy_on_request(h)
  local old = kept.h
  if old then
    local calls = {
      headers = function() return old:headers() end,
      get = function() return old:get("x-a") end,
      add = function() old:add("x-a", "1") end,
      replace = function() old:replace("x-a", "1") end,
      remove = function() old:remove("x-a") end,
      getNumValues = function() return old:getNumValues("x-a") end,
      metadata = function() return old:metadata() end,
      streamInfo = function() return old:streamInfo() end,
      logInfo = function() old:logInfo("late") end,
    }
    for name, f in calls do
      local ok, e = pcall(f)
      local refused = not ok and tostring(e):match("object used outside of proper scope")
      h:headers():add("x-stale", name .. "=" .. (refused and "refused" or tostring(e)))
    end
  end
  kept.h = h
end
"#,
        );
        let mut first = h.request(FakeRequest::default());
        assert!(matches!(
            p.access(&mut first).run().await,
            Ok(Flow::Continue)
        ));
        let mut second = h.request(FakeRequest::default());
        let r = p.access(&mut second).run().await;
        assert!(matches!(r, Ok(Flow::Continue)), "{r:?}");
        let mut seen: Vec<String> = second
            .head
            .headers
            .get_all("x-stale")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                "add=refused",
                "get=refused",
                "getNumValues=refused",
                "headers=refused",
                "logInfo=refused",
                "metadata=refused",
                "remove=refused",
                "replace=refused",
                "streamInfo=refused",
            ]
        );
        assert!(second.head.headers.get("x-a").is_none());
    });
}

#[test]
fn methods_called_with_a_dot_name_the_mistake_and_the_handle_type_is_locked() {
    run(async {
        let h = Harness::new(LuaSettings::default()).unwrap();
        let p = filter(
            r#"
function envoy_on_request(h)
  local function try(f) local ok, e = pcall(f) return ok and "ok" or (tostring(e):gsub("\n", "|")) end
  local hs = h:headers()
  hs:add("x-dot-headers", try(function() return h.headers() end))
  hs:add("x-dot-get", try(function() return hs.get("x-a") end))
  hs:add("x-dot-metadata", try(function() return h.metadata() end))
  hs:add("x-other-self", try(function() return hs.get({}, "x-a") end))
  hs:add("x-mt", tostring(getmetatable(h)))
  hs:add("x-set", try(function() h.get = nil end))
  hs:add("x-type", type(h))
  local n = 0
  for k, v in pairs(hs) do n = n + 1 end
  hs:add("x-pairs", tostring(n > 0))
  hs:add("x-still", hs:get(":method"))
end
"#,
        );
        let mut ctx = h.request(FakeRequest::default());
        let r = p.access(&mut ctx).run().await;
        assert!(matches!(r, Ok(Flow::Continue)), "{r:?}");
        let got = &ctx.head.headers;
        for name in [
            "x-dot-headers",
            "x-dot-get",
            "x-dot-metadata",
            "x-other-self",
        ] {
            assert!(
                header(got, name).contains("expected a stream handle (call its methods with `:`)"),
                "{name}: {got:?}"
            );
        }
        assert_eq!(header(got, "x-mt"), "The metatable is locked");
        assert_ne!(header(got, "x-set"), "ok", "the handle takes no fields");
        assert_eq!(header(got, "x-type"), "userdata");
        assert_eq!(header(got, "x-pairs"), "true");
        assert_eq!(header(got, "x-still"), "GET");
    });
}
