//! Any bytes as the YAML file: a config or a clean error, never a panic. Files a config names
//! (certificates, token files, CAs) are left out: reading whatever path the fuzzer invents
//! (/dev/zero) is not the loader's logic; host names are not resolved (no DNS off the machine).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::config::{self, Loaded};
use portico::snapshot::Snapshot;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut cfg) = config::parse(text) else {
        return;
    };
    cfg.listeners.iter_mut().for_each(|l| l.tls = None);
    cfg.routes.iter_mut().for_each(|r| r.auth = None);
    cfg.upstreams.values_mut().for_each(|u| u.tls = None);
    let loaded = Loaded::from_config(cfg);
    if let Ok(first) = Snapshot::build(&loaded, None) {
        // A reload of the same file next to the live one.
        let _ = Snapshot::build(&loaded, Some(&first)).map(|next| next.check_reloadable(&first));
    }
});
