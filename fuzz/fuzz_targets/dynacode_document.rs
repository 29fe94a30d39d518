//! The lua-resty-dynacode JSON document a code API serves (`sluicegate_code::document`),
//! and the compilation of the scripts it names (`sluicegate_lua::compile`), as each poll
//! runs them.
//!
//! Invariants: no panic; an accepted document's script names are `DOMAIN/PLUGIN` and
//! unique unless the later one carries a problem; a script without a phase says why.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = sluicegate_code::document::parse(data) else {
        return;
    };
    let mut names = HashSet::new();
    for spec in &doc.specs {
        assert!(
            spec.name.starts_with(&format!("{}/", spec.domain)),
            "{spec:?}"
        );
        if !names.insert(spec.name.clone()) {
            assert!(
                spec.problem.is_some(),
                "a doubled name without a problem: {spec:?}"
            );
        }
        if spec.phase.is_none() {
            assert!(spec.problem.is_some(), "no phase and no problem: {spec:?}");
        }
        if spec.problem.is_none() {
            let _ = sluicegate_lua::compile(&spec.name, &spec.code);
        }
    }
});
