//! `sluicegate check-code PATH...`: validates dynamic scripts before they are published —
//! a code-API document (lua-resty-dynacode JSON), a script directory, or single
//! `NAME.PHASE.lua` files — with the same parser and compiler the gateway uses. A CMS or a
//! CI job runs it so that a typo never reaches the code API.

use std::path::Path;

use super::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use sluicegate_code::{document, CodeMetrics, CodeSettings, CodeState, Source, SourceDoc};
use sluicegate_plugins::{Phase, PhaseSet};

/// What one path holds, read as the gateway would read it; errors carry their exit code
/// (1: unreadable, 2: not a valid document).
fn read(path: &Path) -> Result<(Source, SourceDoc), (i32, String)> {
    let unreadable = |e: std::io::Error| (EXIT_FAILURE, format!("cannot read it: {e}"));
    if path.is_dir() {
        return sluicegate_code::directory::scan(path)
            .map(|d| (Source::Directory, d))
            .map_err(unreadable);
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    if path.extension().is_some_and(|e| e == "lua") {
        // A single script: scan its directory and keep only this file.
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut doc = sluicegate_code::directory::scan(dir).map_err(unreadable)?;
        doc.specs.retain(|s| s.name == name);
        return Ok((Source::Directory, doc));
    }
    document::parse(&bytes)
        .map(|d| (Source::Api, d))
        .map_err(|e| (EXIT_USAGE, e))
}

/// Checks every path; prints one line per problem (`PATH: NAME:LINE: message`) and returns
/// 2 if there was any, 1 if a path could not be read, else 0.
pub fn check_code(paths: &[std::path::PathBuf]) -> i32 {
    let settings = CodeSettings {
        api: None,
        directory: Some(".".into()),
        admin_scripts: true,
        phases: PhaseSet::of(&Phase::ALL),
        all_or_nothing: false,
        priority: sluicegate_code::config::defaults::PRIORITY,
        lua_modules: sluicegate_lua::Modules::empty(),
    };
    let mut code = EXIT_OK;
    for path in paths {
        let shown = path.display();
        let (source, doc) = match read(path) {
            Ok(x) => x,
            Err((exit, e)) => {
                eprintln!("{shown}: {e}");
                code = code.max(exit);
                continue;
            }
        };
        let count = doc.specs.len();
        let mut state = CodeState::default();
        let settings = CodeSettings {
            api: (source == Source::Api).then(|| sluicegate_code::config::ApiSettings {
                url: http::Uri::from_static("http://check/"),
                interval: std::time::Duration::from_secs(1),
                jitter: std::time::Duration::ZERO,
                timeout: std::time::Duration::from_secs(1),
                headers: Vec::new(),
                max_bytes: sluicegate_code::config::defaults::MAX_BYTES,
                tls_verify: true,
                ca_file: None,
            }),
            ..settings.clone()
        };
        let outcome = state.apply(
            sluicegate_code::Change::Replace(source, Some(doc)),
            Some(&settings),
            &CodeMetrics::default(),
        );
        if outcome.errors.is_empty() {
            let plural = if count == 1 { "" } else { "s" };
            println!("{shown}: ok ({count} script{plural})");
            continue;
        }
        code = code.max(EXIT_USAGE);
        for e in &outcome.errors {
            match e.line {
                Some(line) => eprintln!("{shown}: {}:{line}: {}", e.name, e.message),
                None => eprintln!("{shown}: {}: {}", e.name, e.message),
            }
        }
    }
    code
}
