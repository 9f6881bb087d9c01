//! Reading a plugin's component, from a file or from the plugins embedded in the binary
//! (`builtin:NAME`, see the `tollgate-builtins` crate), within the size limit and the sha256 pin.

use std::borrow::Cow;

use tollgate_config::Module;

use crate::{LoadError, PluginSpec, sha256_hex};

/// The component's bytes and their hex sha256, checked against `spec`'s size limit and pin.
pub(crate) fn read(
    module: &Module,
    spec: &PluginSpec,
) -> Result<(Cow<'static, [u8]>, String), LoadError> {
    let bytes = bytes(module, spec.max_module_size)?;
    let digest = sha256_hex(&bytes);
    if let Some(expected) = &spec.sha256
        && !expected.eq_ignore_ascii_case(&digest)
    {
        return Err(LoadError::Pin {
            expected: expected.clone(),
            actual: digest,
        });
    }
    Ok((bytes, digest))
}

/// The component's bytes, refused past `max_size` (a file before it is read).
pub(crate) fn bytes(module: &Module, max_size: u64) -> Result<Cow<'static, [u8]>, LoadError> {
    let check_size = |size: u64| {
        if size > max_size {
            return Err(LoadError::TooLarge {
                size,
                limit: max_size,
            });
        }
        Ok(())
    };
    match module {
        Module::Builtin(name) => {
            let b = tollgate_builtins::find(name)
                .ok_or_else(|| LoadError::UnknownBuiltin(tollgate_builtins::unknown(name)))?;
            check_size(b.bytes.len() as u64)?;
            Ok(Cow::Borrowed(b.bytes))
        }
        Module::File(path) => {
            let read_err = |source| LoadError::Read {
                path: path.display().to_string(),
                source,
            };
            check_size(std::fs::metadata(path).map_err(read_err)?.len())?;
            Ok(Cow::Owned(std::fs::read(path).map_err(read_err)?))
        }
    }
}

/// Whether `module` still has the contents whose sha256 is `sha256` (a built-in one always does:
/// it is part of the running binary).
pub(crate) fn unchanged(module: &Module, sha256: &str) -> bool {
    match module {
        Module::Builtin(name) => {
            tollgate_builtins::find(name).is_some_and(|b| sha256_hex(b.bytes) == sha256)
        }
        Module::File(path) => std::fs::read(path).is_ok_and(|bytes| sha256_hex(&bytes) == sha256),
    }
}
