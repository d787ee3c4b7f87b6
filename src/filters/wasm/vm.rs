//! The Wasm runtime (wasmtime): one engine, each module compiled once per file content, and a
//! VM (an instance with its root context) per plugin per worker thread, created on first use
//! from a pre-linked instance. A VM whose guest trapped, ran past `call_timeout` or asked for
//! memory over `max_memory` is thrown away; the next call on that thread gets a fresh one.

use super::host::{self, Host, PluginInfo};
use super::stream::{Body, Stream};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Once, Weak};
use std::time::{Duration, Instant};
use wasmtime::{
    Engine, ExternType, InstancePre, Linker, Module, Store, StoreLimitsBuilder, Trap, TypedFunc,
    UpdateDeadline, ValType,
};

/// The finest `call_timeout`: the resolution of the clock deadlines are kept in.
pub const TICK: Duration = Duration::from_millis(1);
const ROOT_CONTEXT: i32 = 1;

static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    // A failure is one line in the log; the guest's frames would not help an operator.
    config.wasm_backtrace_max_frames(None);
    Engine::new(&config).expect("the default wasmtime configuration is valid")
});

/// Milliseconds since the first call (never 0: 0 is "no call" in a [`Watch`]).
pub fn now_ms() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64 + 1
}

/// When the call running on a worker thread must end (ms, [`now_ms`]), or 0 when none runs:
/// what the watchdog reads.
type Watch = Arc<AtomicU64>;
static WATCHES: Mutex<Vec<Weak<AtomicU64>>> = Mutex::new(Vec::new());
/// The shortest `call_timeout` of any plugin (ms): how often the watchdog looks.
static SHORTEST: AtomicU64 = AtomicU64::new(u64::MAX);

thread_local! {
    static WATCH: Watch = {
        let w = Watch::default();
        WATCHES.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(&w));
        w
    };
}

/// The watchdog (started with the first plugin): it bumps the engine's epoch when a call runs
/// past its deadline, and the call's store, on seeing the bump, traps if its own deadline has
/// passed (another thread's call that is still in time goes on). A call shorter than the
/// shortest `call_timeout` (all of them, nearly always) costs it nothing: it looks every
/// shortest `call_timeout` (a call it sees is then still in time) and wakes at the deadlines of
/// the calls it saw, so an idle or busy portico is not woken a thousand times a second.
fn start_watchdog() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("portico-wasm-watchdog".into())
            .spawn(|| loop {
                let now = now_ms();
                let mut next = now + SHORTEST.load(Ordering::Relaxed).clamp(1, 1000);
                let mut due = false;
                WATCHES
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|w| {
                        let Some(w) = w.upgrade() else {
                            return false;
                        };
                        match w.load(Ordering::Relaxed) {
                            0 => {}
                            d if d <= now => due = true,
                            d => next = next.min(d),
                        }
                        true
                    });
                if due {
                    ENGINE.increment_epoch();
                    next = next.min(now + 1);
                }
                std::thread::sleep(Duration::from_millis(next - now));
            });
        if let Err(e) = spawned {
            log::error!("cannot start the wasm watchdog thread, call_timeout is not enforced: {e}");
        }
    });
}

/// Compiled modules by the SHA-256 of their file: a reload of an unchanged file compiles
/// nothing. Bounded: the oldest are forgotten past 32 (they live on in the plugins using them).
type Compiled = Vec<([u8; 32], Module)>;
static MODULES: LazyLock<Mutex<Compiled>> = LazyLock::new(Default::default);

pub fn compile(bytes: &[u8]) -> Result<Module, String> {
    use sha2::Digest;
    let sha: [u8; 32] = sha2::Sha256::digest(bytes).into();
    let mut modules = MODULES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, m)) = modules.iter().find(|(s, _)| *s == sha) {
        return Ok(m.clone());
    }
    let module = Module::new(&ENGINE, bytes).map_err(|e| format!("does not compile: {e:#}"))?;
    if modules.len() >= 32 {
        modules.remove(0);
    }
    modules.push((sha, module.clone()));
    Ok(module)
}

/// Why a call into the guest failed.
#[derive(Debug)]
pub enum Failure {
    /// The guest trapped (an `unreachable`, a bad memory access, `proc_exit`, no memory left).
    Trap(String),
    /// It ran past `call_timeout`.
    Timeout,
    /// It returned what the ABI does not allow (a bad action, `false` from on_configure).
    BadReturn(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Trap(e) => write!(f, "trapped: {e}"),
            Failure::Timeout => f.write_str("ran past call_timeout"),
            Failure::BadReturn(e) => f.write_str(e),
        }
    }
}

impl Failure {
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Trap(_) => "trap",
            Failure::Timeout => "timeout",
            Failure::BadReturn(_) => "bad_return",
        }
    }
}

fn failure(e: wasmtime::Error) -> Failure {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Timeout,
        _ => Failure::Trap(format!("{e:#}")),
    }
}

/// A module checked against the ABI, linked and ready to instantiate.
pub struct Plugin {
    pub id: u64,
    pub info: Arc<PluginInfo>,
    /// The module imports `proxy_http_call`: its request phase may wait.
    pub calls: bool,
    /// The module exports `proxy_on_response_headers` (else the filter skips the response phase).
    pub response_headers: bool,
    /// The module exports `proxy_on_request_body` / `proxy_on_response_body`.
    pub request_body: bool,
    pub response_body: bool,
    pre: InstancePre<Host>,
    max_memory: usize,
    /// `call_timeout` in ms.
    timeout: u64,
}

/// The exports portico calls, with the types the ABI gives them (wasm32: every pointer,
/// size and id is an i32).
const CALLBACKS: &[(&str, &[ValType], &[ValType])] = &[
    (
        "proxy_on_context_create",
        &[ValType::I32, ValType::I32],
        &[],
    ),
    (
        "proxy_on_vm_start",
        &[ValType::I32, ValType::I32],
        &[ValType::I32],
    ),
    (
        "proxy_on_configure",
        &[ValType::I32, ValType::I32],
        &[ValType::I32],
    ),
    (
        "proxy_on_request_headers",
        &[ValType::I32, ValType::I32, ValType::I32],
        &[ValType::I32],
    ),
    (
        "proxy_on_response_headers",
        &[ValType::I32, ValType::I32, ValType::I32],
        &[ValType::I32],
    ),
    (
        "proxy_on_request_body",
        &[ValType::I32, ValType::I32, ValType::I32],
        &[ValType::I32],
    ),
    (
        "proxy_on_response_body",
        &[ValType::I32, ValType::I32, ValType::I32],
        &[ValType::I32],
    ),
    (
        "proxy_on_http_call_response",
        &[
            ValType::I32,
            ValType::I32,
            ValType::I32,
            ValType::I32,
            ValType::I32,
        ],
        &[],
    ),
    ("proxy_on_tick", &[ValType::I32], &[]),
    ("proxy_on_log", &[ValType::I32], &[]),
    ("proxy_on_done", &[ValType::I32], &[ValType::I32]),
    ("proxy_on_delete", &[ValType::I32], &[]),
    ("proxy_on_memory_allocate", &[ValType::I32], &[ValType::I32]),
    ("malloc", &[ValType::I32], &[ValType::I32]),
];

impl Plugin {
    /// Checks `module` (exports, imports), links it and runs its start once (`on_vm_start`,
    /// `on_configure`), so a module or configuration that fails does so here, at `-t` or
    /// reload, not on a request. Errors are one line each.
    pub fn new(
        module: &Module,
        info: PluginInfo,
        max_memory: usize,
        call_timeout: Duration,
    ) -> Result<Plugin, Vec<String>> {
        let mut errors = Vec::new();
        let exports: HashMap<&str, ExternType> =
            module.exports().map(|e| (e.name(), e.ty())).collect();
        // 0.2.0 and 0.2.1 differ in what the host offers (both sets are), not in the callbacks.
        let abi = ["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];
        if !abi.iter().any(|v| exports.contains_key(v)) {
            errors.push(
                "exports no proxy_abi_version_0_2_1 or proxy_abi_version_0_2_0: not a Proxy-Wasm 0.2 module"
                    .to_owned(),
            );
        }
        if !matches!(exports.get("memory"), Some(ExternType::Memory(_))) {
            errors.push("exports no memory".to_owned());
        }
        if !exports.contains_key("proxy_on_memory_allocate") && !exports.contains_key("malloc") {
            errors.push("exports no proxy_on_memory_allocate (or malloc)".to_owned());
        }
        if !exports.contains_key("proxy_on_context_create") {
            errors.push("exports no proxy_on_context_create".to_owned());
        }
        for (name, params, results) in CALLBACKS {
            let Some(ty) = exports.get(name) else {
                continue;
            };
            let fits = match ty {
                ExternType::Func(f) => {
                    let same = |a: &mut dyn ExactSizeIterator<Item = ValType>, b: &[ValType]| {
                        a.len() == b.len() && a.zip(b).all(|(x, y)| ValType::eq(&x, y))
                    };
                    same(&mut f.params(), params) && same(&mut f.results(), results)
                }
                _ => false,
            };
            if !fits {
                errors.push(format!("export {name} does not have the ABI's type"));
            }
        }
        let unknown: Vec<String> = module
            .imports()
            .filter(|i| {
                let known = match i.module() {
                    "env" => host::ENV_FUNCTIONS.contains(&i.name()),
                    m if host::WASI_MODULES.contains(&m) => {
                        host::WASI_FUNCTIONS.contains(&i.name())
                    }
                    _ => false,
                };
                !known
            })
            .map(|i| format!("{}.{}", i.module(), i.name()))
            .collect();
        if !unknown.is_empty() {
            errors.push(format!(
                "imports {}, which portico does not provide",
                unknown.join(", ")
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut linker = Linker::new(&ENGINE);
        host::link(&mut linker)
            .map_err(|e| vec![format!("cannot link the host functions: {e:#}")])?;
        let pre = linker
            .instantiate_pre(module)
            .map_err(|e| vec![format!("does not link: {e:#}")])?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let plugin = Plugin {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            info: Arc::new(info),
            calls: module
                .imports()
                .any(|i| i.module() == "env" && i.name() == "proxy_http_call"),
            response_headers: exports.contains_key("proxy_on_response_headers"),
            request_body: exports.contains_key("proxy_on_request_body"),
            response_body: exports.contains_key("proxy_on_response_body"),
            pre,
            max_memory,
            timeout: call_timeout.as_millis().max(1) as u64,
        };
        SHORTEST.fetch_min(plugin.timeout, Ordering::Relaxed);
        start_watchdog();
        // Started once here: a module that traps or refuses its configuration is refused now.
        Vm::new(&plugin).map_err(|e| vec![format!("does not start: {e}")])?;
        Ok(plugin)
    }
}

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponse = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// A plugin's instance on one thread, its root context started.
pub struct Vm {
    store: Store<Host>,
    context_create: TypedFunc<(i32, i32), ()>,
    request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    call_response: Option<CallResponse>,
    on_tick: Option<TypedFunc<i32, ()>>,
    on_log: Option<TypedFunc<i32, ()>>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_delete: Option<TypedFunc<i32, ()>>,
    next_context: i32,
    /// Stream contexts created here and not yet deleted.
    open: Vec<i32>,
    /// Tells this VM from the one that replaces it (for its tick task).
    serial: u64,
}

impl Vm {
    fn new(plugin: &Plugin) -> Result<Vm, Failure> {
        let host = Host {
            plugin: Arc::clone(&plugin.info),
            limits: StoreLimitsBuilder::new()
                .memory_size(plugin.max_memory)
                .trap_on_grow_failure(true)
                .build(),
            stream: None,
            tick_period_ms: 0,
            last_token: 0,
            memory: None,
        };
        let mut store = Store::new(&ENGINE, host);
        store.limiter(|h| &mut h.limits);
        // Seeing the epoch bumped (by the watchdog, for some call past its deadline): this
        // call (it runs on this thread) traps if it is past its own, else goes on to the next
        // bump.
        store.epoch_deadline_callback(|_| {
            match now_ms() >= WATCH.with(|w| w.load(Ordering::Relaxed)) {
                true => Ok(UpdateDeadline::Interrupt),
                false => Ok(UpdateDeadline::Continue(1)),
            }
        });
        // Starting (a runtime's init, on_vm_start, on_configure) may take longer than a
        // request's callback: a second at least.
        let timeout = plugin.timeout.max(1000);
        let instance = watched(&mut store, timeout, |store| plugin.pre.instantiate(store))?;
        store.data_mut().memory = instance.get_memory(&mut store, "memory");
        macro_rules! func {
            ($name:expr) => {
                instance.get_typed_func(&mut store, $name).ok()
            };
        }
        for start in ["_initialize", "_start"] {
            if let Ok(f) = instance.get_typed_func::<(), ()>(&mut store, start) {
                watched(&mut store, timeout, |store| f.call(store, ()))?;
                break;
            }
        }
        let context_create: TypedFunc<(i32, i32), ()> = func!("proxy_on_context_create")
            .ok_or_else(|| Failure::BadReturn("no proxy_on_context_create".into()))?;
        let vm_start: Option<TypedFunc<(i32, i32), i32>> = func!("proxy_on_vm_start");
        let configure: Option<TypedFunc<(i32, i32), i32>> = func!("proxy_on_configure");
        let mut vm = Vm {
            request_headers: func!("proxy_on_request_headers"),
            response_headers: func!("proxy_on_response_headers"),
            request_body: func!("proxy_on_request_body"),
            response_body: func!("proxy_on_response_body"),
            call_response: func!("proxy_on_http_call_response"),
            on_tick: func!("proxy_on_tick"),
            on_log: func!("proxy_on_log"),
            on_done: func!("proxy_on_done"),
            on_delete: func!("proxy_on_delete"),
            context_create,
            store,
            next_context: ROOT_CONTEXT + 1,
            open: Vec::new(),
            serial: {
                static SERIAL: AtomicU64 = AtomicU64::new(1);
                SERIAL.fetch_add(1, Ordering::Relaxed)
            },
        };
        vm.call(timeout, |vm| {
            vm.context_create.call(&mut vm.store, (ROOT_CONTEXT, 0))
        })?;
        let vm_conf = plugin.info.vm_configuration.len() as i32;
        if let Some(f) = vm_start {
            let ok = vm.call(timeout, |vm| f.call(&mut vm.store, (ROOT_CONTEXT, vm_conf)))?;
            if ok == 0 {
                return Err(Failure::BadReturn(
                    "proxy_on_vm_start returned false".into(),
                ));
            }
        }
        let conf = plugin.info.configuration.len() as i32;
        if let Some(f) = configure {
            let ok = vm.call(timeout, |vm| f.call(&mut vm.store, (ROOT_CONTEXT, conf)))?;
            if ok == 0 {
                return Err(Failure::BadReturn(
                    "proxy_on_configure returned false: the plugin refused its configuration"
                        .into(),
                ));
            }
        }
        Ok(vm)
    }

    /// Runs `f` (a call into the guest) with `timeout` ms to finish.
    fn call<T>(
        &mut self,
        timeout: u64,
        f: impl FnOnce(&mut Vm) -> wasmtime::Result<T>,
    ) -> Result<T, Failure> {
        watched(self, timeout, |vm| f(vm))
    }

    /// Creates a stream context and runs `proxy_on_request_headers` over `stream`. Returns the
    /// context and the stream as the guest left it.
    pub fn request(
        &mut self,
        timeout: u64,
        stream: Box<Stream>,
        end: bool,
    ) -> Result<(i32, Box<Stream>), Failure> {
        let ctx = self.next_context;
        self.next_context = self.next_context.wrapping_add(1).max(ROOT_CONTEXT + 1);
        self.call(timeout, |vm| {
            vm.context_create.call(&mut vm.store, (ctx, ROOT_CONTEXT))
        })?;
        self.open.push(ctx);
        // The fields and the four pseudo-headers.
        let count = stream.request.len() as i32 + 4;
        self.store.data_mut().stream = Some(stream);
        let action = match self.request_headers.clone() {
            Some(f) => self.call(timeout, |vm| {
                f.call(&mut vm.store, (ctx, count, end as i32))
            }),
            None => Ok(0),
        };
        let stream = self.store.data_mut().stream.take();
        let action = action?;
        let stream = stream.ok_or_else(|| Failure::BadReturn("stream lost".into()))?;
        check_action(action, "proxy_on_request_headers")?;
        Ok((ctx, stream))
    }

    /// `proxy_on_tick` on the root context.
    pub fn tick(&mut self, timeout: u64) -> Result<(), Failure> {
        match self.on_tick.clone() {
            Some(f) => self.call(timeout, |vm| f.call(&mut vm.store, ROOT_CONTEXT)),
            None => Ok(()),
        }
    }

    /// `proxy_on_http_call_response` for the answer `stream.call_response` holds to call
    /// `token`; `Ok(None)` when this VM does not know the context.
    pub fn http_call_response(
        &mut self,
        timeout: u64,
        ctx: i32,
        token: u32,
        stream: Box<Stream>,
    ) -> Result<Option<Box<Stream>>, Failure> {
        let Some(f) = self
            .call_response
            .clone()
            .filter(|_| self.open.contains(&ctx))
        else {
            return Ok(None);
        };
        let (headers, body) = stream
            .call_response
            .as_ref()
            .map_or((0, 0), |(h, b)| (h.len() as i32, b.len() as i32));
        self.store.data_mut().stream = Some(stream);
        let done = self.call(timeout, |vm| {
            f.call(&mut vm.store, (ctx, token as i32, headers, body, 0))
        });
        let stream = self.store.data_mut().stream.take();
        done?;
        Ok(stream)
    }

    /// `proxy_on_response_headers` for a context of this VM; `Ok(None)` when it does not know
    /// the context (it was replaced after a failure, or the request moved threads).
    pub fn response(
        &mut self,
        timeout: u64,
        ctx: i32,
        stream: Box<Stream>,
    ) -> Result<Option<Box<Stream>>, Failure> {
        let Some(f) = self
            .response_headers
            .clone()
            .filter(|_| self.open.contains(&ctx))
        else {
            return Ok(None);
        };
        let count = stream.response.as_ref().map_or(0, |(_, f)| f.len() + 1) as i32;
        self.store.data_mut().stream = Some(stream);
        let action = self.call(timeout, |vm| f.call(&mut vm.store, (ctx, count, 0)));
        let stream = self.store.data_mut().stream.take();
        check_action(action?, "proxy_on_response_headers")?;
        Ok(stream)
    }

    /// `proxy_on_request_body` or `proxy_on_response_body` (as `stream.body` says) for a context
    /// of this VM: the stream as the guest left it and whether it asked to see more first
    /// (it returned Pause: `StopIterationAndBuffer`). A VM that does not know the context
    /// (see [`Vm::response`]) gives the stream back untouched.
    pub fn body(
        &mut self,
        timeout: u64,
        ctx: i32,
        stream: Box<Stream>,
        end: bool,
    ) -> Result<(Box<Stream>, bool), Failure> {
        let Some((which, data)) = &stream.body else {
            return Ok((stream, false));
        };
        let (f, callback) = match which {
            Body::Request => (&self.request_body, "proxy_on_request_body"),
            Body::Response => (&self.response_body, "proxy_on_response_body"),
        };
        let Some(f) = f.clone().filter(|_| self.open.contains(&ctx)) else {
            return Ok((stream, false));
        };
        let size = data.len() as i32;
        self.store.data_mut().stream = Some(stream);
        let action = self.call(timeout, |vm| f.call(&mut vm.store, (ctx, size, end as i32)));
        let stream = self.store.data_mut().stream.take();
        let action = action?;
        check_action(action, callback)?;
        let stream = stream.ok_or_else(|| Failure::BadReturn("stream lost".into()))?;
        Ok((stream, action == 1))
    }

    /// The end of a stream: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`.
    /// `stream`: made only when the module has one of those callbacks.
    pub fn finish(
        &mut self,
        timeout: u64,
        ctx: i32,
        stream: impl FnOnce() -> Box<Stream>,
    ) -> Result<(), Failure> {
        let Some(at) = self.open.iter().position(|c| *c == ctx) else {
            return Ok(());
        };
        self.open.swap_remove(at);
        if self.on_log.is_none() && self.on_done.is_none() && self.on_delete.is_none() {
            return Ok(());
        }
        self.store.data_mut().stream = Some(stream());
        let result = self.end_callbacks(timeout, ctx);
        self.store.data_mut().stream = None;
        result
    }
}

impl Vm {
    fn end_callbacks(&mut self, timeout: u64, ctx: i32) -> Result<(), Failure> {
        if let Some(f) = self.on_log.clone() {
            self.call(timeout, |vm| f.call(&mut vm.store, ctx))?;
        }
        if let Some(f) = self.on_done.clone() {
            self.call(timeout, |vm| f.call(&mut vm.store, ctx))?;
        }
        if let Some(f) = self.on_delete.clone() {
            self.call(timeout, |vm| f.call(&mut vm.store, ctx))?;
        }
        Ok(())
    }
}

fn check_action(action: i32, callback: &str) -> Result<(), Failure> {
    match action {
        // Continue; Pause is taken as Continue: nothing portico does yet can resume it.
        0 | 1 => Ok(()),
        other => Err(Failure::BadReturn(format!(
            "{callback} returned {other}, not an action"
        ))),
    }
}

/// Runs `f` (a call into the guest of `on`'s store) with `timeout` ms to finish: the deadline
/// in the thread's [`Watch`], read by the watchdog and by the store's epoch callback.
fn watched<S: HasStore, T>(
    on: &mut S,
    timeout: u64,
    f: impl FnOnce(&mut S) -> wasmtime::Result<T>,
) -> Result<T, Failure> {
    let deadline = now_ms() + timeout;
    on.store().set_epoch_deadline(1);
    WATCH.with(|w| w.store(deadline, Ordering::Relaxed));
    let result = f(on);
    WATCH.with(|w| w.store(0, Ordering::Relaxed));
    result.map_err(failure)
}

trait HasStore {
    fn store(&mut self) -> &mut Store<Host>;
}

impl HasStore for Store<Host> {
    fn store(&mut self) -> &mut Store<Host> {
        self
    }
}

impl HasStore for Vm {
    fn store(&mut self) -> &mut Store<Host> {
        &mut self.store
    }
}

/// A thread's VMs: a few (one per plugin a route uses), found by a scan, not a hash.
#[derive(Default)]
struct Vms(Vec<(u64, Weak<PluginInfo>, Vm)>);

impl Vms {
    fn find(&mut self, id: u64) -> Option<usize> {
        self.0.iter().position(|(i, _, _)| *i == id)
    }
}

thread_local! {
    /// This thread's VMs, by plugin id (with the plugin's info, to forget VMs of plugins a
    /// reload dropped).
    static VMS: RefCell<Vms> = RefCell::default();
}

impl Plugin {
    /// Runs `f` on this thread's VM of the plugin, creating it first if needed. A failure
    /// throws the VM away. `Ok(None)`: the thread's VMs are busy (a re-entrant call) or gone.
    pub fn with_vm<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Vm, u64) -> Result<T, Failure>,
    ) -> Result<Option<T>, Failure> {
        let run = |vms: &RefCell<Vms>| {
            let Ok(mut vms) = vms.try_borrow_mut() else {
                return Ok(None);
            };
            let at = match vms.find(self.id) {
                Some(at) => at,
                None => {
                    vms.0.retain(|(_, info, _)| info.strong_count() > 0);
                    let vm = Vm::new(self)?;
                    let period = vm.store.data().tick_period_ms;
                    if period > 0 {
                        start_ticks(Arc::downgrade(self), vm.serial, period);
                    }
                    vms.0.push((self.id, Arc::downgrade(&self.info), vm));
                    vms.0.len() - 1
                }
            };
            let result = f(&mut vms.0[at].2, self.timeout);
            if result.is_err() {
                vms.0.swap_remove(at);
            }
            result.map(Some)
        };
        VMS.try_with(run).unwrap_or(Ok(None))
    }

    /// Runs `f` only if this thread has the plugin's VM (`serial`: that one VM); whether it
    /// ran. A failure throws the VM away.
    pub fn with_existing_vm(
        &self,
        serial: Option<u64>,
        f: impl FnOnce(&mut Vm, u64) -> Result<(), Failure>,
    ) -> Result<bool, Failure> {
        let run = |vms: &RefCell<Vms>| {
            let Ok(mut vms) = vms.try_borrow_mut() else {
                return Ok(false);
            };
            let found = vms
                .find(self.id)
                .filter(|at| serial.is_none_or(|s| vms.0[*at].2.serial == s));
            let Some(at) = found else {
                return Ok(false);
            };
            let result = f(&mut vms.0[at].2, self.timeout);
            if result.is_err() {
                vms.0.swap_remove(at);
            }
            result.map(|()| true)
        };
        VMS.try_with(run).unwrap_or(Ok(false))
    }
}

/// `proxy_on_tick` every `period_ms` on this thread's VM `serial` of the plugin (a task on the
/// worker thread's runtime, as Envoy's timer on its worker's dispatcher). It ends with the VM
/// (replaced after a failure: the new VM starts its own) or the plugin (a reload).
fn start_ticks(plugin: Weak<Plugin>, serial: u64, period_ms: u32) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let period = Duration::from_millis(u64::from(period_ms).max(1));
    runtime.spawn(async move {
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        every.tick().await;
        loop {
            every.tick().await;
            let Some(plugin) = plugin.upgrade() else {
                return;
            };
            match plugin.with_existing_vm(Some(serial), |vm, d| vm.tick(d)) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    log::warn!("wasm {}: on tick: {e}", plugin.info.name);
                    return;
                }
            }
        }
    });
}
