//! Keys from their materials: what a `jwt` plugin's `keys` entry and a consumer's `jwt`
//! credential both make of a secret or a public key.

use sluicegate_core::diag::{Diags, Path};
use sluicegate_jwt::keys::{Alg, Key, Material};

/// The keys of `materials` (each with the config path it came from), every one checked
/// against `alg`; a problem is recorded at its path.
pub(crate) fn keys_of(
    materials: Vec<(Path, Result<Material, String>)>,
    kid: Option<String>,
    alg: Option<Alg>,
    path: &Path,
    diags: &mut Diags,
) -> Vec<Key> {
    let mut out = Vec::new();
    for (p, m) in materials {
        match m {
            Ok(material) => {
                if let Some(a) = alg.filter(|a| !material.fits(*a)) {
                    diags.push(
                        &path.key("alg"),
                        format!("{} does not fit a {}", a.as_str(), material.kind()),
                    );
                    continue;
                }
                out.push(Key {
                    kid: kid.clone(),
                    alg,
                    material,
                });
            }
            Err(e) => diags.push(&p, e),
        }
    }
    out
}

/// An entry's optional `alg`; an unknown name is recorded at `path.alg` (`Err`).
pub(crate) fn algorithm(
    name: Option<&str>,
    path: &Path,
    diags: &mut Diags,
) -> Result<Option<Alg>, ()> {
    match name.map(|a| (a, Alg::parse(a))) {
        Some((a, None)) => {
            diags.push(
                &path.key("alg"),
                format!("unknown algorithm `{a}`; supported: {}", Alg::names()),
            );
            Err(())
        }
        Some((_, alg)) => Ok(alg),
        None => Ok(None),
    }
}
