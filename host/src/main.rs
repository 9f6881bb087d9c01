// mimalloc instead of glibc malloc: the request path allocates and frees small objects on one
// worker thread and drops them on another; glibc's arenas spent ~12% of the gateway's CPU on
// that under load (bench/README.md, "Allocator"). Built without transparent huge pages
// (`no_thp`): with them every 2 MiB of its arena a startup touched stayed resident, 26 MiB of an
// idle gateway's 57 (bench/README.md, "Memory and size").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its place in mimalloc v3's `mi_option_t` (the constants
/// libmimalloc-sys exports are v2's numbering).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps memory it no longer uses before it gives it back to the system, in
/// ms. Its default, 1000, kept a second of the request log's and the connections' freed buffers
/// resident: 54–64 MiB at the 64-connection load against 49–53 with 10 (v2's default), at no
/// CPU per request a timed run could tell (bench/README.md, "Memory and size").
const PURGE_DELAY_MS: std::ffi::c_long = 10;

#[allow(unsafe_code)] // the workspace's one exception (Cargo.toml)
fn tune_allocator() {
    // SAFETY: called first thing in `main`, before any other thread exists (`mi_option_set` is
    // not thread-safe); the option is a plain integer.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    tollgate::cli::main()
}

#[cfg(test)]
mod tests {
    /// The option at that index is the purge delay: its default there is the purge delay's
    /// (1000 ms; no other option of v3 defaults to it), and tuning sets it.
    #[test]
    #[allow(unsafe_code)]
    fn the_allocator_tuning_sets_the_purge_delay() {
        let get = || unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(), 1000);
        }
        super::tune_allocator();
        assert_eq!(get(), super::PURGE_DELAY_MS);
    }
}
