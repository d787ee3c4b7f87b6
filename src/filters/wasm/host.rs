//! The host side of the Proxy-Wasm ABI (0.2.1 and 0.2.0, as Envoy implements them): the
//! functions a guest imports from `env`, and the few WASI ones SDK-built guests import
//! (no file, no network, no environment: a filter sees only what the ABI hands it).
//!
//! The guest's memory is read and written with bounds checks; data handed to the guest is
//! copied into memory it allocates itself (`proxy_on_memory_allocate`, else `malloc`), as the
//! ABI says. A bad pointer is `BadArgument`, never a crash.

use super::stream::{field, Body, Call, Edit, Map, Stream};
use http::{HeaderName, HeaderValue};
use log::{debug, error, info, trace, warn};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use wasmtime::{Caller, Extern, Linker, Memory, StoreLimits};

// Status codes (proxy-wasm-spec, abi-versions/v0.2.1).
pub const OK: i32 = 0;
pub const NOT_FOUND: i32 = 1;
pub const BAD_ARGUMENT: i32 = 2;
pub const EMPTY: i32 = 7;
pub const CAS_MISMATCH: i32 = 8;
pub const INTERNAL_FAILURE: i32 = 10;
pub const UNIMPLEMENTED: i32 = 12;

// Map types.
const REQUEST_HEADERS: i32 = 0;
const RESPONSE_HEADERS: i32 = 2;
const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
// Buffer types.
const HTTP_REQUEST_BODY: i32 = 0;
const HTTP_RESPONSE_BODY: i32 = 1;
const HTTP_CALL_RESPONSE_BODY: i32 = 4;
const VM_CONFIGURATION: i32 = 6;
const PLUGIN_CONFIGURATION: i32 = 7;

/// The largest single read from guest memory (a key, a value, a body): 1 MiB.
const MAX_READ: usize = 1 << 20;
/// HTTP calls one callback may make.
const MAX_CALLS: usize = 8;
/// Shared data, all modules together: keys and bytes held at most.
const MAX_SHARED_KEYS: usize = 10_000;
const MAX_SHARED_VALUE: usize = 64 << 10;

/// What a plugin is, for the properties and buffers the guest reads.
pub struct PluginInfo {
    pub name: String,
    pub root_id: String,
    pub configuration: Vec<u8>,
    pub vm_configuration: Vec<u8>,
    /// The most body bytes held for the guest (and the most it may make a body grow to).
    pub max_body: usize,
}

/// A VM's state, reached from every host function through the store.
pub struct Host {
    pub plugin: Arc<PluginInfo>,
    pub limits: StoreLimits,
    /// The stream whose callback runs now (`None`: a root-context callback).
    pub stream: Option<Box<Stream>>,
    /// `proxy_set_tick_period_milliseconds`, as the VM's start left it.
    pub tick_period_ms: u32,
    /// The last `proxy_http_call` token given.
    pub last_token: u32,
    /// The guest's exported memory (looked up once, not on every access).
    pub memory: Option<Memory>,
}

/// `proxy_get/set_shared_data`: one store for the process, with a CAS per key.
type SharedData = HashMap<Vec<u8>, (Vec<u8>, u32)>;
static SHARED: LazyLock<Mutex<SharedData>> = LazyLock::new(Default::default);

/// The names of every host function provided, by module, for the import check.
pub const ENV_FUNCTIONS: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_buffer_status",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_header_map_size",
    "proxy_send_local_response",
    "proxy_set_effective_context",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_done",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_http_call",
    "proxy_get_status",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_call_foreign_function",
];

pub const WASI_MODULES: &[&str] = &["wasi_snapshot_preview1", "wasi_unstable"];
pub const WASI_FUNCTIONS: &[&str] = &[
    "fd_write",
    "fd_read",
    "fd_close",
    "fd_seek",
    "fd_fdstat_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "proc_exit",
    "clock_time_get",
    "clock_res_get",
    "random_get",
    "environ_sizes_get",
    "environ_get",
    "args_sizes_get",
    "args_get",
    "sched_yield",
    "poll_oneoff",
];

type Cx<'a> = Caller<'a, Host>;
type R = wasmtime::Result<i32>;

fn memory(cx: &mut Cx<'_>) -> Option<Memory> {
    cx.data().memory
}

/// `len` bytes at `ptr` of the guest's memory; `None` when out of bounds or too long.
fn read(cx: &mut Cx<'_>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    if len > MAX_READ {
        return None;
    }
    let mem = memory(cx)?;
    mem.data(&*cx)
        .get(ptr..ptr.checked_add(len)?)
        .map(<[u8]>::to_vec)
}

fn write(cx: &mut Cx<'_>, ptr: i32, bytes: &[u8]) -> bool {
    match memory(cx) {
        Some(mem) => mem.write(&mut *cx, ptr as u32 as usize, bytes).is_ok(),
        None => false,
    }
}

/// A host function's status after writing its results: `BAD_ARGUMENT` when the guest gave a
/// place outside its memory.
fn status(written: bool) -> i32 {
    if written {
        OK
    } else {
        BAD_ARGUMENT
    }
}

fn write_u32(cx: &mut Cx<'_>, ptr: i32, v: u32) -> bool {
    write(cx, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory the guest allocates and stores its address and size at the two
/// return pointers. A trap in the guest's allocator is the guest's trap.
fn give(cx: &mut Cx<'_>, bytes: &[u8], ret_ptr: i32, ret_len: i32) -> R {
    let alloc = ["proxy_on_memory_allocate", "malloc"]
        .iter()
        .find_map(|name| cx.get_export(name).and_then(Extern::into_func));
    let Some(alloc) = alloc else {
        return Ok(INTERNAL_FAILURE);
    };
    let alloc = alloc.typed::<i32, i32>(&*cx)?;
    let at = alloc.call(&mut *cx, bytes.len() as i32)?;
    if at == 0 && !bytes.is_empty() {
        return Ok(INTERNAL_FAILURE);
    }
    let ok = write(cx, at, bytes)
        && write_u32(cx, ret_ptr, at as u32)
        && write_u32(cx, ret_len, bytes.len() as u32);
    Ok(status(ok))
}

/// A metric a guest defined: one per plugin name, kind and metric name, shared by its VMs.
enum GuestMetric {
    Counter(prometheus::IntCounter),
    Gauge(prometheus::IntGauge),
    Histogram(prometheus::Histogram),
}

/// Guest metrics at most, all plugins together (each is a Prometheus series).
const MAX_GUEST_METRICS: usize = 1000;

type GuestMetrics = (HashMap<(String, i32, String), u32>, Vec<GuestMetric>);
static GUEST_METRICS: LazyLock<Mutex<GuestMetrics>> = LazyLock::new(Default::default);

/// The id of the plugin's metric `name` of `kind` (0 counter, 1 gauge, 2 histogram), defined
/// now if new; `Err(status)` for a kind the ABI does not have or one metric too many.
fn define_metric(plugin: &str, kind: i32, name: &str) -> Result<u32, i32> {
    let metrics = &crate::metrics::METRICS;
    let mut all = GUEST_METRICS.lock().unwrap_or_else(|p| p.into_inner());
    let key = (plugin.to_owned(), kind, name.to_owned());
    if let Some(id) = all.0.get(&key) {
        return Ok(*id);
    }
    if all.1.len() >= MAX_GUEST_METRICS {
        return Err(INTERNAL_FAILURE);
    }
    let labels = [plugin, name];
    let metric = match kind {
        0 => GuestMetric::Counter(metrics.wasm_counters.with_label_values(&labels)),
        1 => GuestMetric::Gauge(metrics.wasm_gauges.with_label_values(&labels)),
        2 => GuestMetric::Histogram(metrics.wasm_histograms.with_label_values(&labels)),
        _ => return Err(BAD_ARGUMENT),
    };
    let id = all.1.len() as u32;
    all.1.push(metric);
    all.0.insert(key, id);
    Ok(id)
}

/// `f` on the metric `id` (its status is `OK` unless it says otherwise); `NOT_FOUND` for an
/// id never given.
fn with_metric(id: i32, f: impl FnOnce(&GuestMetric) -> i32) -> i32 {
    let all = GUEST_METRICS.lock().unwrap_or_else(|p| p.into_inner());
    match all.1.get(id as u32 as usize) {
        Some(m) => f(m),
        None => NOT_FOUND,
    }
}

/// `f` of the buffer `kind` as the running callback sees it; `None` when it has no such one.
fn with_buffer<T>(host: &Host, kind: i32, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
    let stream = host.stream.as_ref();
    let body = |which: Body| {
        stream
            .and_then(|s| s.body.as_ref())
            .filter(|(k, _)| *k == which)
            .map(|(_, b)| b.as_slice())
    };
    let buffer = match kind {
        HTTP_REQUEST_BODY => body(Body::Request)?,
        HTTP_RESPONSE_BODY => body(Body::Response)?,
        HTTP_CALL_RESPONSE_BODY => stream?.call_response.as_ref()?.1.as_slice(),
        VM_CONFIGURATION => &host.plugin.vm_configuration,
        PLUGIN_CONFIGURATION => &host.plugin.configuration,
        _ => return None,
    };
    Some(f(buffer))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Proxy-Wasm's header map encoding: count, then each key and value length, then each key
/// and value followed by a NUL.
pub fn encode_pairs(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(pairs));
    out.extend((pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend((k.len() as u32).to_le_bytes());
        out.extend((v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend(k.as_bytes());
        out.push(0);
        out.extend(*v);
        out.push(0);
    }
    out
}

/// The size of [`encode_pairs`]'s encoding: the count, then per pair two lengths and the key
/// and value, each followed by a NUL.
fn encoded_len(pairs: &[(&str, &[u8])]) -> usize {
    4 + pairs
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len() + 2)
        .sum::<usize>()
}

pub fn decode_pairs(data: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let u32_at = |i: usize| -> Option<usize> {
        Some(u32::from_le_bytes(data.get(i..i + 4)?.try_into().ok()?) as usize)
    };
    let n = u32_at(0)?;
    if n > data.len() / 8 {
        return None;
    }
    let mut at = 4 + n * 8;
    let mut pairs = Vec::with_capacity(n);
    for i in 0..n {
        let (kl, vl) = (u32_at(4 + i * 8)?, u32_at(8 + i * 8)?);
        let k = data.get(at..at.checked_add(kl)?)?;
        at += kl + 1;
        let v = data.get(at..at.checked_add(vl)?)?;
        at += vl + 1;
        pairs.push((String::from_utf8(k.to_vec()).ok()?, v.to_vec()));
    }
    Some(pairs)
}

/// Adds every host function to `linker`.
pub fn link(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    let env = "env";
    linker.func_wrap(
        env,
        "proxy_log",
        |mut cx: Cx<'_>, level: i32, p: i32, n: i32| -> R {
            let Some(msg) = read(&mut cx, p, n) else {
                return Ok(BAD_ARGUMENT);
            };
            let who = &cx.data().plugin.name;
            let msg = text(&msg);
            match level {
                0 => trace!("wasm {who}: {msg}"),
                1 => debug!("wasm {who}: {msg}"),
                2 => info!("wasm {who}: {msg}"),
                3 => warn!("wasm {who}: {msg}"),
                _ => error!("wasm {who}: {msg}"),
            }
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_log_level",
        |mut cx: Cx<'_>, ret: i32| -> R {
            let level = match log::max_level() {
                log::LevelFilter::Trace => 0,
                log::LevelFilter::Debug => 1,
                log::LevelFilter::Info => 2,
                log::LevelFilter::Warn => 3,
                _ => 4,
            };
            Ok(status(write_u32(&mut cx, ret, level)))
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_current_time_nanoseconds",
        |mut cx: Cx<'_>, ret: i32| -> R {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            Ok(status(write(&mut cx, ret, &now.to_le_bytes())))
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_tick_period_milliseconds",
        |mut cx: Cx<'_>, period: i32| -> R {
            cx.data_mut().tick_period_ms = period as u32;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_property",
        |mut cx: Cx<'_>, p: i32, n: i32, ret_ptr: i32, ret_len: i32| -> R {
            let Some(path) = read(&mut cx, p, n) else {
                return Ok(BAD_ARGUMENT);
            };
            let path: Vec<&[u8]> = path.split(|b| *b == 0).filter(|s| !s.is_empty()).collect();
            match property(cx.data(), &path) {
                Some(value) => give(&mut cx, &value, ret_ptr, ret_len),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_buffer_bytes",
        |mut cx: Cx<'_>, kind: i32, start: i32, max: i32, ret_ptr: i32, ret_len: i32| -> R {
            let part = with_buffer(cx.data(), kind, |buffer| {
                let start = (start as u32 as usize).min(buffer.len());
                let end = start.saturating_add(max as u32 as usize).min(buffer.len());
                buffer[start..end].to_vec()
            });
            match part {
                None => Ok(NOT_FOUND),
                Some(part) if part.is_empty() => Ok(EMPTY),
                Some(part) => give(&mut cx, &part, ret_ptr, ret_len),
            }
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_buffer_bytes",
        |mut cx: Cx<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> R {
            let Some(data) = read(&mut cx, ptr, len) else {
                return Ok(BAD_ARGUMENT);
            };
            let max_body = cx.data().plugin.max_body;
            let fixed = cx.data().stream.as_ref().is_some_and(|s| s.body_fixed);
            let which = match kind {
                HTTP_REQUEST_BODY => Body::Request,
                HTTP_RESPONSE_BODY => Body::Response,
                _ => return Ok(NOT_FOUND),
            };
            let body = cx.data_mut().stream.as_mut().and_then(|s| s.body.as_mut());
            let Some((_, body)) = body.filter(|(k, _)| *k == which) else {
                return Ok(NOT_FOUND);
            };
            // Envoy's rule, generalised: bytes [start, start + size) are replaced by the data
            // (start 0: the first `size` bytes; start at the end: appended).
            let start = start as u32 as usize;
            if start > body.len() {
                return Ok(BAD_ARGUMENT);
            }
            let end = start.saturating_add(size as u32 as usize).min(body.len());
            // A body whose Content-Length stays keeps its size; none grows past max_body (a
            // piece already larger may be rewritten, not grown).
            let grown = body.len() - (end - start) + data.len();
            if (fixed && data.len() != end - start) || (grown > body.len() && grown > max_body) {
                return Ok(BAD_ARGUMENT);
            }
            body.splice(start..end, data);
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_buffer_status",
        |mut cx: Cx<'_>, kind: i32, ret_len: i32, ret_flags: i32| -> R {
            let Some(len) = with_buffer(cx.data(), kind, <[u8]>::len) else {
                return Ok(NOT_FOUND);
            };
            let ok = write_u32(&mut cx, ret_len, len as u32) && write_u32(&mut cx, ret_flags, 0);
            Ok(status(ok))
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_define_metric",
        |mut cx: Cx<'_>, kind: i32, np: i32, nl: i32, ret_id: i32| -> R {
            let Some(name) = read(&mut cx, np, nl) else {
                return Ok(BAD_ARGUMENT);
            };
            let plugin = cx.data().plugin.name.clone();
            let id = match define_metric(&plugin, kind, &text(&name)) {
                Ok(id) => id,
                Err(status) => return Ok(status),
            };
            Ok(status(write_u32(&mut cx, ret_id, id)))
        },
    )?;
    // As Envoy: increment adds to a counter (not below zero) or a gauge; record adds to a
    // counter, sets a gauge, observes a histogram; a histogram cannot be read.
    linker.func_wrap(
        env,
        "proxy_increment_metric",
        |_: Cx<'_>, id: i32, offset: i64| -> R {
            Ok(with_metric(id, |m| match m {
                GuestMetric::Counter(c) if offset >= 0 => {
                    c.inc_by(offset as u64);
                    OK
                }
                GuestMetric::Gauge(g) => {
                    g.add(offset);
                    OK
                }
                _ => BAD_ARGUMENT,
            }))
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_record_metric",
        |_: Cx<'_>, id: i32, value: i64| -> R {
            let value = value as u64;
            Ok(with_metric(id, |m| {
                match m {
                    GuestMetric::Counter(c) => c.inc_by(value),
                    GuestMetric::Gauge(g) => g.set(value.min(i64::MAX as u64) as i64),
                    GuestMetric::Histogram(h) => h.observe(value as f64),
                }
                OK
            }))
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_metric",
        |mut cx: Cx<'_>, id: i32, ret: i32| -> R {
            let mut value = None;
            let status = with_metric(id, |m| match m {
                GuestMetric::Counter(c) => {
                    value = Some(c.get());
                    OK
                }
                GuestMetric::Gauge(g) => {
                    value = Some(g.get().max(0) as u64);
                    OK
                }
                GuestMetric::Histogram(_) => BAD_ARGUMENT,
            });
            match value {
                Some(v) if write(&mut cx, ret, &v.to_le_bytes()) => Ok(OK),
                Some(_) => Ok(BAD_ARGUMENT),
                None => Ok(status),
            }
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_header_map_pairs",
        |mut cx: Cx<'_>, map: i32, ret_ptr: i32, ret_len: i32| -> R {
            let Some(encoded) = with_map(&mut cx, map, encode_pairs) else {
                return Ok(NOT_FOUND);
            };
            give(&mut cx, &encoded, ret_ptr, ret_len)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_header_map_size",
        |mut cx: Cx<'_>, map: i32, ret: i32| -> R {
            let Some(size) = with_map(&mut cx, map, encoded_len) else {
                return Ok(NOT_FOUND);
            };
            Ok(status(write_u32(&mut cx, ret, size as u32)))
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_header_map_value",
        |mut cx: Cx<'_>, map: i32, kp: i32, kn: i32, ret_ptr: i32, ret_len: i32| -> R {
            let Some(key) = read(&mut cx, kp, kn) else {
                return Ok(BAD_ARGUMENT);
            };
            let key = text(&key).to_ascii_lowercase();
            let value = with_map(&mut cx, map, |h| {
                // Several fields of one name read as one, comma-joined (as Envoy does).
                let values: Vec<&[u8]> = h
                    .iter()
                    .filter(|(k, _)| *k == key)
                    .map(|(_, v)| *v)
                    .collect();
                (!values.is_empty()).then(|| values.join(&b","[..]))
            });
            match value.flatten() {
                Some(v) => give(&mut cx, &v, ret_ptr, ret_len),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    for (name, make) in [
        (
            "proxy_add_header_map_value",
            Edit::Add as fn(HeaderName, HeaderValue) -> Edit,
        ),
        ("proxy_replace_header_map_value", Edit::Replace),
    ] {
        linker.func_wrap(
            env,
            name,
            move |mut cx: Cx<'_>, map: i32, kp: i32, kn: i32, vp: i32, vn: i32| -> R {
                let (Some(key), Some(value)) = (read(&mut cx, kp, kn), read(&mut cx, vp, vn))
                else {
                    return Ok(BAD_ARGUMENT);
                };
                match field(&key, &value) {
                    Some((k, v)) => Ok(edit(&mut cx, map, make(k, v))),
                    None => Ok(BAD_ARGUMENT),
                }
            },
        )?;
    }
    linker.func_wrap(
        env,
        "proxy_remove_header_map_value",
        |mut cx: Cx<'_>, map: i32, kp: i32, kn: i32| -> R {
            let key = read(&mut cx, kp, kn).and_then(|k| HeaderName::from_bytes(&k).ok());
            match key {
                Some(k) => Ok(edit(&mut cx, map, Edit::Remove(k))),
                None => Ok(BAD_ARGUMENT),
            }
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_header_map_pairs",
        |mut cx: Cx<'_>, map: i32, p: i32, n: i32| -> R {
            let Some(pairs) = read(&mut cx, p, n).and_then(|d| decode_pairs(&d)) else {
                return Ok(BAD_ARGUMENT);
            };
            // Pseudo-headers are not fields (and cannot change); any other bad one refuses all.
            let fields: Option<Vec<_>> = pairs
                .iter()
                .filter(|(k, _)| !k.starts_with(':'))
                .map(|(k, v)| field(k.as_bytes(), v))
                .collect();
            match fields {
                Some(f) => Ok(edit(&mut cx, map, Edit::SetAll(f))),
                None => Ok(BAD_ARGUMENT),
            }
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_send_local_response",
        |mut cx: Cx<'_>,
         status: i32,
         _dp: i32,
         _dn: i32,
         bp: i32,
         bn: i32,
         hp: i32,
         hn: i32,
         _grpc: i32|
         -> R {
            let Some(body) = read(&mut cx, bp, bn) else {
                return Ok(BAD_ARGUMENT);
            };
            let headers = match hn {
                0 => Vec::new(),
                _ => match read(&mut cx, hp, hn).and_then(|d| decode_pairs(&d)) {
                    Some(h) => h,
                    None => return Ok(BAD_ARGUMENT),
                },
            };
            let Some(stream) = cx.data_mut().stream.as_mut() else {
                return Ok(NOT_FOUND);
            };
            stream.local = Some((status as u32, headers, body));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_effective_context",
        |_: Cx<'_>, _ctx: i32| -> R {
            // One stream's callback runs at a time in a VM: the effective context is that one.
            Ok(OK)
        },
    )?;
    linker.func_wrap(env, "proxy_continue_stream", |_: Cx<'_>, _kind: i32| -> R {
        Ok(OK)
    })?;
    linker.func_wrap(env, "proxy_close_stream", |_: Cx<'_>, _kind: i32| -> R {
        Ok(UNIMPLEMENTED)
    })?;
    linker.func_wrap(env, "proxy_continue_request", |_: Cx<'_>| -> R { Ok(OK) })?;
    linker.func_wrap(env, "proxy_continue_response", |_: Cx<'_>| -> R { Ok(OK) })?;
    linker.func_wrap(env, "proxy_done", |_: Cx<'_>| -> R { Ok(OK) })?;
    linker.func_wrap(
        env,
        "proxy_get_shared_data",
        |mut cx: Cx<'_>, kp: i32, kn: i32, ret_ptr: i32, ret_len: i32, ret_cas: i32| -> R {
            let Some(key) = read(&mut cx, kp, kn) else {
                return Ok(BAD_ARGUMENT);
            };
            let found = SHARED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned();
            let Some((value, cas)) = found else {
                return Ok(NOT_FOUND);
            };
            if !write_u32(&mut cx, ret_cas, cas) {
                return Ok(BAD_ARGUMENT);
            }
            give(&mut cx, &value, ret_ptr, ret_len)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_set_shared_data",
        |mut cx: Cx<'_>, kp: i32, kn: i32, vp: i32, vn: i32, cas: i32| -> R {
            let (Some(key), Some(value)) = (read(&mut cx, kp, kn), read(&mut cx, vp, vn)) else {
                return Ok(BAD_ARGUMENT);
            };
            if value.len() > MAX_SHARED_VALUE {
                return Ok(BAD_ARGUMENT);
            }
            let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
            if !shared.contains_key(&key) && shared.len() >= MAX_SHARED_KEYS {
                return Ok(INTERNAL_FAILURE);
            }
            let entry = shared.entry(key).or_insert((Vec::new(), 0));
            if cas != 0 && entry.1 != cas as u32 {
                return Ok(CAS_MISMATCH);
            }
            *entry = (value, entry.1.wrapping_add(1).max(1));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        env,
        "proxy_http_call",
        |mut cx: Cx<'_>,
         up: i32,
         un: i32,
         hp: i32,
         hn: i32,
         bp: i32,
         bn: i32,
         _tp: i32,
         _tn: i32,
         timeout_ms: i32,
         ret: i32|
         -> R {
            let (Some(upstream), Some(headers), Some(body)) = (
                read(&mut cx, up, un),
                read(&mut cx, hp, hn).and_then(|d| decode_pairs(&d)),
                read(&mut cx, bp, bn),
            ) else {
                return Ok(BAD_ARGUMENT);
            };
            let has = |name: &str| headers.iter().any(|(k, _)| k == name);
            if !(has(":method") && has(":path") && has(":authority")) {
                return Ok(BAD_ARGUMENT);
            }
            let token = cx.data().last_token.wrapping_add(1).max(1);
            let Some(stream) = cx.data_mut().stream.as_mut() else {
                // From a root context (on_tick, on_configure): not offered yet.
                return Ok(UNIMPLEMENTED);
            };
            if stream.calls.len() >= MAX_CALLS {
                return Ok(INTERNAL_FAILURE);
            }
            stream.calls.push(Call {
                token,
                upstream: text(&upstream),
                headers,
                body,
                timeout: std::time::Duration::from_millis(u64::from(timeout_ms as u32)),
            });
            cx.data_mut().last_token = token;
            Ok(status(write_u32(&mut cx, ret, token)))
        },
    )?;
    unimplemented(linker)?;
    wasi(linker)
}

/// ABI functions portico does not offer yet: they answer `Unimplemented`, so an SDK that
/// imports them (but a filter that never calls them) still loads.
fn unimplemented(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    let env = "env";
    linker.func_wrap(
        env,
        "proxy_set_property",
        |_: Cx<'_>, _: i32, _: i32, _: i32, _: i32| -> R { Ok(UNIMPLEMENTED) },
    )?;
    linker.func_wrap(
        env,
        "proxy_get_status",
        |_: Cx<'_>, _: i32, _: i32, _: i32| -> R { Ok(UNIMPLEMENTED) },
    )?;
    linker.func_wrap(
        env,
        "proxy_register_shared_queue",
        |_: Cx<'_>, _: i32, _: i32, _: i32| -> R { Ok(UNIMPLEMENTED) },
    )?;
    linker.func_wrap(
        env,
        "proxy_resolve_shared_queue",
        |_: Cx<'_>, _: i32, _: i32, _: i32, _: i32, _: i32| -> R { Ok(UNIMPLEMENTED) },
    )?;
    linker.func_wrap(
        env,
        "proxy_dequeue_shared_queue",
        |_: Cx<'_>, _: i32, _: i32, _: i32| -> R { Ok(UNIMPLEMENTED) },
    )?;
    linker.func_wrap(
        env,
        "proxy_enqueue_shared_queue",
        |_: Cx<'_>, _: i32, _: i32, _: i32| -> R { Ok(UNIMPLEMENTED) },
    )?;
    linker.func_wrap(
        env,
        "proxy_call_foreign_function",
        |_: Cx<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> R { Ok(UNIMPLEMENTED) },
    )?;
    Ok(())
}

// WASI errno values.
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_INVAL: i32 = 28;
const ERRNO_NOSYS: i32 = 52;

/// The WASI functions SDK runtimes import, under both module names: standard output and error
/// go to the log, clocks and randomness work, and there is no file, argument or environment.
fn wasi(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    for m in WASI_MODULES {
        linker.func_wrap(
            m,
            "fd_write",
            |mut cx: Cx<'_>, fd: i32, iovs: i32, count: i32, written: i32| -> R {
                if fd != 1 && fd != 2 {
                    return Ok(ERRNO_BADF);
                }
                let Some(list) = read(&mut cx, iovs, count.saturating_mul(8)) else {
                    return Ok(ERRNO_INVAL);
                };
                let mut out = Vec::new();
                for iov in list.chunks_exact(8) {
                    let p = i32::from_le_bytes(iov[..4].try_into().unwrap_or_default());
                    let n = i32::from_le_bytes(iov[4..].try_into().unwrap_or_default());
                    match read(&mut cx, p, n) {
                        Some(bytes) => out.extend(bytes),
                        None => return Ok(ERRNO_INVAL),
                    }
                }
                let who = &cx.data().plugin.name;
                let line = text(&out);
                let line = line.trim_end();
                if !line.is_empty() {
                    match fd {
                        1 => info!("wasm {who}: {line}"),
                        _ => warn!("wasm {who}: {line}"),
                    }
                }
                Ok(if write_u32(&mut cx, written, out.len() as u32) {
                    ERRNO_SUCCESS
                } else {
                    ERRNO_INVAL
                })
            },
        )?;
        linker.func_wrap(
            m,
            "fd_read",
            |_: Cx<'_>, _: i32, _: i32, _: i32, _: i32| -> R { Ok(ERRNO_BADF) },
        )?;
        linker.func_wrap(m, "fd_close", |_: Cx<'_>, _: i32| -> R { Ok(ERRNO_BADF) })?;
        linker.func_wrap(
            m,
            "fd_seek",
            |_: Cx<'_>, _: i32, _: i64, _: i32, _: i32| -> R { Ok(ERRNO_BADF) },
        )?;
        linker.func_wrap(m, "fd_fdstat_get", |_: Cx<'_>, _: i32, _: i32| -> R {
            Ok(ERRNO_BADF)
        })?;
        linker.func_wrap(m, "fd_prestat_get", |_: Cx<'_>, _: i32, _: i32| -> R {
            Ok(ERRNO_BADF)
        })?;
        linker.func_wrap(
            m,
            "fd_prestat_dir_name",
            |_: Cx<'_>, _: i32, _: i32, _: i32| -> R { Ok(ERRNO_BADF) },
        )?;
        linker.func_wrap(
            m,
            "proc_exit",
            |_: Cx<'_>, code: i32| -> wasmtime::Result<()> {
                Err(wasmtime::format_err!("the module called proc_exit({code})"))
            },
        )?;
        linker.func_wrap(
            m,
            "clock_time_get",
            |mut cx: Cx<'_>, id: i32, _precision: i64, ret: i32| -> R {
                let ns = match id {
                    0 => SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
                    _ => monotonic_ns(),
                };
                Ok(if write(&mut cx, ret, &ns.to_le_bytes()) {
                    ERRNO_SUCCESS
                } else {
                    ERRNO_INVAL
                })
            },
        )?;
        linker.func_wrap(
            m,
            "clock_res_get",
            |mut cx: Cx<'_>, _id: i32, ret: i32| -> R {
                Ok(if write(&mut cx, ret, &1u64.to_le_bytes()) {
                    ERRNO_SUCCESS
                } else {
                    ERRNO_INVAL
                })
            },
        )?;
        linker.func_wrap(m, "random_get", |mut cx: Cx<'_>, p: i32, n: i32| -> R {
            let mut buf = vec![0u8; (n as u32 as usize).min(MAX_READ)];
            if getrandom::fill(&mut buf).is_err() {
                return Ok(ERRNO_NOSYS);
            }
            Ok(if write(&mut cx, p, &buf) {
                ERRNO_SUCCESS
            } else {
                ERRNO_INVAL
            })
        })?;
        for name in ["environ_sizes_get", "args_sizes_get"] {
            linker.func_wrap(m, name, |mut cx: Cx<'_>, count: i32, size: i32| -> R {
                let ok = write_u32(&mut cx, count, 0) && write_u32(&mut cx, size, 0);
                Ok(if ok { ERRNO_SUCCESS } else { ERRNO_INVAL })
            })?;
        }
        for name in ["environ_get", "args_get"] {
            linker.func_wrap(m, name, |_: Cx<'_>, _: i32, _: i32| -> R {
                Ok(ERRNO_SUCCESS)
            })?;
        }
        linker.func_wrap(m, "sched_yield", |_: Cx<'_>| -> R { Ok(ERRNO_SUCCESS) })?;
        linker.func_wrap(
            m,
            "poll_oneoff",
            |_: Cx<'_>, _: i32, _: i32, _: i32, _: i32| -> R { Ok(ERRNO_NOSYS) },
        )?;
    }
    Ok(())
}

fn monotonic_ns() -> u64 {
    static START: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);
    START.elapsed().as_nanos() as u64
}

/// `f` over the header map `map` of the current stream; `None` when there is none.
fn with_map<T>(cx: &mut Cx<'_>, map: i32, f: impl FnOnce(&[(&str, &[u8])]) -> T) -> Option<T> {
    let stream = cx.data().stream.as_ref()?;
    let map = match map {
        REQUEST_HEADERS => Map::Request,
        RESPONSE_HEADERS => Map::Response,
        HTTP_CALL_RESPONSE_HEADERS => Map::CallResponse,
        _ => return None,
    };
    stream.pairs(map).map(|pairs| f(&pairs))
}

fn edit(cx: &mut Cx<'_>, map: i32, e: Edit) -> i32 {
    let Some(stream) = cx.data_mut().stream.as_mut() else {
        return NOT_FOUND;
    };
    let result = match map {
        REQUEST_HEADERS if stream.request_open => stream.edit_request(e),
        RESPONSE_HEADERS if stream.response.is_some() => stream.edit_response(e),
        // A map that cannot change now (request headers after they were sent).
        REQUEST_HEADERS | RESPONSE_HEADERS => return BAD_ARGUMENT,
        _ => return NOT_FOUND,
    };
    status(result)
}

/// A property by its path (segments as Envoy names them).
fn property(host: &Host, path: &[&[u8]]) -> Option<Vec<u8>> {
    let plugin = &host.plugin;
    match path {
        [b"plugin_root_id"] => return Some(plugin.root_id.clone().into_bytes()),
        [b"plugin_name"] => return Some(plugin.name.clone().into_bytes()),
        [b"plugin_vm_id"] => return Some(Vec::new()),
        _ => {}
    }
    host.stream.as_ref()?.property(path)
}
