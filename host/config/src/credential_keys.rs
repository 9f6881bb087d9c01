//! `storage.credential_keys`: the keys that encrypt upstream credentials set at run time, parsed.

use base64::Engine;

/// Bytes of one key (AES-256).
pub const CREDENTIAL_KEY_LEN: usize = 32;

/// `ID:BASE64[,ID:BASE64…]` as `(id, key)` pairs, the encrypting one first; or what is wrong.
/// Ids are 1 to 32 letters, digits, `-` or `_`, each used once; a key is 32 bytes in standard
/// base64 (`openssl rand -base64 32`).
pub fn credential_keys(text: &str) -> Result<Vec<(String, [u8; CREDENTIAL_KEY_LEN])>, String> {
    let mut keys: Vec<(String, [u8; CREDENTIAL_KEY_LEN])> = Vec::new();
    for (i, part) in text.split(',').map(str::trim).enumerate() {
        let (id, b64) = part
            .split_once(':')
            .ok_or_else(|| format!("key {} is not ID:BASE64", i + 1))?;
        let id_ok = !id.is_empty()
            && id.len() <= 32
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(format!(
                "key {}: the id must be 1 to 32 letters, digits, - or _",
                i + 1
            ));
        }
        if keys.iter().any(|(seen, _)| seen == id) {
            return Err(format!("key id {id:?} is given twice"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| format!("key {id:?} is not base64"))?;
        let key: [u8; CREDENTIAL_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| format!("key {id:?} must be 32 bytes (e.g. `openssl rand -base64 32`)"))?;
        keys.push((id.to_owned(), key));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_in_order_and_bad_ones_say_why() {
        let k = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let keys = credential_keys(&format!("new:{k}, old:{k}")).unwrap();
        assert_eq!(
            keys.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["new", "old"]
        );
        assert!(
            credential_keys("nocolon")
                .unwrap_err()
                .contains("ID:BASE64")
        );
        assert!(credential_keys("a:!!").unwrap_err().contains("base64"));
        assert!(credential_keys("a:AAAA").unwrap_err().contains("32 bytes"));
        assert!(
            credential_keys(&format!("a:{k},a:{k}"))
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            credential_keys(&format!("a b:{k}"))
                .unwrap_err()
                .contains("id")
        );
    }
}
