//! Hashes and encodings: `ngx.md5`, `ngx.md5_bin`, `ngx.sha1_bin`, `ngx.hmac_sha1`,
//! `ngx.crc32_short`/`long`, `ngx.encode_base64`/`decode_base64`, and the
//! `sluicegate.crypto` table (`sha256`, `hmac_sha256`, hex and base64url helpers,
//! constant-time comparison). Digests are binary strings, like OpenResty's `*_bin`.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use mlua::{Lua, Table, Value};
use sha1::Digest as _;

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks(2)
        .map(|p| {
            let h = (p[0] as char).to_digit(16)?;
            let l = (p[1] as char).to_digit(16)?;
            Some((h * 16 + l) as u8)
        })
        .collect()
}

/// CRC-32 (IEEE 802.3), as nginx's `ngx_crc32_long`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    match Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> Vec<u8> {
    match Hmac::<sha1::Sha1>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    super::super::convert::as_bytes(v).unwrap_or_default()
}

fn set(lua: &Lua, t: &Table, name: &str, f: fn(&[u8]) -> Vec<u8>) -> mlua::Result<()> {
    t.raw_set(
        name,
        lua.create_function(move |lua, s: Value| lua.create_string(f(&bytes(&s))))?,
    )
}

fn set2(lua: &Lua, t: &Table, name: &str, f: fn(&[u8], &[u8]) -> Vec<u8>) -> mlua::Result<()> {
    t.raw_set(
        name,
        lua.create_function(move |lua, (a, b): (Value, Value)| {
            lua.create_string(f(&bytes(&a), &bytes(&b)))
        })?,
    )
}

fn decode_with(engine: &base64::engine::GeneralPurpose, s: &[u8]) -> Option<Vec<u8>> {
    engine.decode(s).ok()
}

/// Registers the hash functions on `ngx` and the `sluicegate.crypto` table.
pub fn register(lua: &Lua, ngx: &Table, sluicegate: &Table) -> mlua::Result<()> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    ngx.raw_set(
        "md5",
        lua.create_function(|_, s: Value| Ok(hex(&md5::Md5::digest(bytes(&s)))))?,
    )?;
    set(lua, ngx, "md5_bin", |d| md5::Md5::digest(d).to_vec())?;
    set(lua, ngx, "sha1_bin", |d| sha1::Sha1::digest(d).to_vec())?;
    set2(lua, ngx, "hmac_sha1", hmac_sha1)?;
    for name in ["crc32_short", "crc32_long"] {
        ngx.raw_set(
            name,
            lua.create_function(|_, s: Value| Ok(crc32(&bytes(&s))))?,
        )?;
    }
    ngx.raw_set(
        "encode_base64",
        lua.create_function(|lua, (s, no_padding): (Value, Option<bool>)| {
            let d = bytes(&s);
            lua.create_string(if no_padding.unwrap_or(false) {
                STANDARD_NO_PAD.encode(d)
            } else {
                STANDARD.encode(d)
            })
        })?,
    )?;
    ngx.raw_set(
        "decode_base64",
        lua.create_function(|lua, s: Value| {
            let d = bytes(&s);
            // OpenResty accepts missing padding.
            let decoded = decode_with(&STANDARD, &d).or_else(|| decode_with(&STANDARD_NO_PAD, &d));
            decoded.map(|b| lua.create_string(b)).transpose()
        })?,
    )?;

    let crypto = lua.create_table()?;
    set(lua, &crypto, "sha256", |d| sha2::Sha256::digest(d).to_vec())?;
    set(lua, &crypto, "sha1", |d| sha1::Sha1::digest(d).to_vec())?;
    set(lua, &crypto, "md5", |d| md5::Md5::digest(d).to_vec())?;
    set2(lua, &crypto, "hmac_sha256", hmac_sha256)?;
    set2(lua, &crypto, "hmac_sha1", hmac_sha1)?;
    crypto.raw_set(
        "to_hex",
        lua.create_function(|_, s: Value| Ok(hex(&bytes(&s))))?,
    )?;
    crypto.raw_set(
        "from_hex",
        lua.create_function(|lua, s: Value| {
            unhex(&bytes(&s)).map(|b| lua.create_string(b)).transpose()
        })?,
    )?;
    crypto.raw_set(
        "equals",
        lua.create_function(|_, (a, b): (Value, Value)| {
            let (a, b) = (bytes(&a), bytes(&b));
            // Constant time for equal lengths: compare every byte.
            Ok(a.len() == b.len() && a.iter().zip(&b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0)
        })?,
    )?;
    crypto.raw_set(
        "encode_base64url",
        lua.create_function(|lua, s: Value| lua.create_string(URL_SAFE_NO_PAD.encode(bytes(&s))))?,
    )?;
    crypto.raw_set(
        "decode_base64url",
        lua.create_function(|lua, s: Value| {
            let d = bytes(&s);
            let trimmed: Vec<u8> = d.iter().copied().filter(|b| *b != b'=').collect();
            decode_with(&URL_SAFE_NO_PAD, &trimmed)
                .map(|b| lua.create_string(b))
                .transpose()
        })?,
    )?;
    sluicegate.raw_set("crypto", crypto)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_known_digests() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(
            hex(&hmac_sha256(
                b"key",
                b"The quick brown fox jumps over the lazy dog"
            )),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        assert_eq!(
            hex(&hmac_sha1(
                b"key",
                b"The quick brown fox jumps over the lazy dog"
            )),
            "de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9"
        );
        assert_eq!(unhex(b"00ff"), Some(vec![0, 255]));
    }
}
