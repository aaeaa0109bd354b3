//! Test harness: real Envoy and real upstream processes on loopback.
//!
//! Every process started here is owned by a value whose `Drop` kills and
//! reaps it, and dies with the process that started it however that one
//! dies ([`die_with_parent`]). Ports are never fixed: upstreams and Envoy
//! bind port 0 and report the port they got. Envoy's log goes to a file that
//! is printed when the owning test panics.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml::Value as Yaml;

pub mod xds;

/// The repository root (the parent of `integration/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The Envoy binary: `$ENVOY_BIN`, else the project venv's.
pub fn envoy_bin() -> PathBuf {
    std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"))
}

/// Which build of the filter the tests load: `TRAFFIC_SHIFT_BUILD=module`
/// runs them against the Envoy dynamic module (`make module`), anything
/// else (the default) against the .wasm. [`Bootstrap::for_test`] turns the
/// shipped wasm filter into the module filter with the same JSON, and
/// [`Metrics::parse`] reads the module's stat names as the wasm build's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Wasm,
    Module,
}

impl Build {
    pub fn current() -> Build {
        match std::env::var("TRAFFIC_SHIFT_BUILD").as_deref() {
            Ok("module") => Build::Module,
            _ => Build::Wasm,
        }
    }
}

/// The dynamic module: `$TRAFFIC_SHIFT_MODULE`, else the `make module` build.
pub fn module_path() -> PathBuf {
    std::env::var_os("TRAFFIC_SHIFT_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/module/libtraffic_shift.so"))
}

/// The `@type` of the dynamic-module HTTP filter.
pub const MODULE_FILTER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";

/// Prometheus names of the module's stats start with this where the wasm
/// build's start with `traffic_shift_` (Envoy strips `wasmcustom.`, not
/// `dynamicmodulescustom.`, and prefixes `envoy_`).
pub const MODULE_METRIC_PREFIX: &str = "envoy_dynamicmodulescustom_";

/// The filter: `$TRAFFIC_SHIFT_WASM`, else the release build.
pub fn wasm_path() -> PathBuf {
    std::env::var_os("TRAFFIC_SHIFT_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/wasm32-wasip1/release/traffic_shift.wasm"))
}

/// The test-only build whose filter traps on a request carrying
/// `x-test-trap` (`make integration` builds it).
pub fn trap_wasm_path() -> PathBuf {
    repo_root().join("target/trap/wasm32-wasip1/release/traffic_shift.wasm")
}

/// The `upstream` binary of this package, next to the running executable
/// (`target/<profile>/` for binaries, `target/<profile>/deps/` for tests).
pub fn upstream_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("UPSTREAM_BIN") {
        return PathBuf::from(p);
    }
    sibling_bin("upstream")
}

/// A binary of this package, next to the running executable.
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for _ in 0..2 {
        let candidate = dir.join(name);
        if candidate.exists() {
            return candidate;
        }
        dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    PathBuf::from(name)
}

/// The `traffic-shift` CLI (`check`), built by `make integration` into the
/// same target directory: `$TRAFFIC_SHIFT_CLI`, else next to this package's
/// binaries.
pub fn cli_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRAFFIC_SHIFT_CLI") {
        return PathBuf::from(p);
    }
    let upstream = upstream_bin();
    upstream
        .parent()
        .map(|d| d.join("traffic-shift"))
        .unwrap_or_else(|| PathBuf::from("traffic-shift"))
}

/// Makes the child killed (SIGKILL) when its parent dies, however it dies,
/// even by SIGKILL, so no Envoy or upstream outlives a killed test or demo
/// (Linux: `prctl(PR_SET_PDEATHSIG)` in the child, before exec). The signal
/// comes when the *thread* that spawned the child ends: spawn from a thread
/// that lives as long as the child should (the main thread, a runtime's
/// worker), never from a short-lived one such as `spawn_blocking`.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec the closure only makes two system
        // calls (prctl, getppid) and may call _exit, all async-signal-safe;
        // it allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before prctl: no signal will come.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    cmd
}

/// A demo upstream process that answers with its name.
pub struct Upstream {
    child: Child,
    pub name: String,
    pub addr: SocketAddr,
}

impl Upstream {
    /// Starts `upstream --name NAME` on a free loopback port.
    pub fn start(name: &str) -> Upstream {
        Self::start_with(name, "127.0.0.1:0", &[])
    }

    /// Starts an upstream answering every request with `status`.
    pub fn with_status(name: &str, status: u16) -> Upstream {
        Self::start_with(name, "127.0.0.1:0", &["--status", &status.to_string()])
    }

    /// Starts an upstream on `listen` with extra flags.
    pub fn start_with(name: &str, listen: &str, extra: &[&str]) -> Upstream {
        Self::spawn(&upstream_bin(), name, listen, extra)
    }

    /// Starts the gRPC upstream (`grpc-upstream`, tonic) with extra flags
    /// (`--code N`, `--fail-percent P`, `--message TEXT`) on a free
    /// loopback port; its cluster must speak HTTP/2
    /// ([`Bootstrap::with_http2`]).
    pub fn grpc(name: &str, extra: &[&str]) -> Upstream {
        Self::spawn(&sibling_bin("grpc-upstream"), name, "127.0.0.1:0", extra)
    }

    fn spawn(bin: &Path, name: &str, listen: &str, extra: &[&str]) -> Upstream {
        let mut child = die_with_parent(&mut Command::new(bin))
            .args(["--name", name, "--listen", listen])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin:?}: {e}"));
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("upstream {name} did not start: {line:?}");
        };
        Upstream {
            child,
            name: name.to_string(),
            addr,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Changes how the upstream answers from now on (`status`,
    /// `delay-ms`, `fail-every`, `body`, `header`), through its control
    /// endpoint.
    pub async fn set(&self, setting: &str, value: impl std::fmt::Display) {
        let url = format!("http://{}/__upstream/{setting}/{value}", self.addr);
        let resp = reqwest::Client::new()
            .put(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(resp.status(), 204, "{url}");
    }

    /// Kills the process now (its port then refuses connections); the
    /// value keeps its name and address.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An Envoy bootstrap, loaded from one of the shipped `envoy/` files and
/// adjusted for a test: free ports, absolute .wasm path, upstream addresses,
/// plugin configuration.
#[derive(Clone)]
pub struct Bootstrap(pub Yaml);

impl Bootstrap {
    /// `envoy/envoy.yaml`, the file `make run` starts.
    pub fn shipped() -> Bootstrap {
        Self::load(&repo_root().join("envoy/envoy.yaml"))
    }

    pub fn load(path: &Path) -> Bootstrap {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Bootstrap(
            serde_yaml::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display())),
        )
    }

    /// Admin and listeners on port 0, the .wasm by absolute path.
    pub fn for_test(mut self) -> Bootstrap {
        set_port(&mut self.0["admin"]["address"], 0);
        if let Some(listeners) = self.0["static_resources"]["listeners"].as_sequence_mut() {
            for l in listeners {
                set_port(&mut l["address"], 0);
            }
        }
        let wasm = wasm_path().to_string_lossy().into_owned();
        for_each_wasm(&mut self.0, &mut |cfg| {
            cfg["vm_config"]["code"]["local"]["filename"] = Yaml::from(wasm.clone());
        });
        if Build::current() == Build::Module {
            self = self.as_module();
        }
        self
    }

    /// Every traffic_shift wasm filter replaced by the dynamic-module
    /// filter with the same plugin JSON (`traffic-shift envoy --module`
    /// prints the same block).
    pub fn as_module(mut self) -> Bootstrap {
        for_each_filter(&mut self.0, &mut |tc| {
            if tc["@type"].as_str()
                != Some("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm")
            {
                return;
            }
            let json = tc["config"]["configuration"]["value"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            *tc = module_typed_config(&json);
        });
        self
    }

    /// Points each cluster named like an upstream at that upstream.
    pub fn with_upstreams(self, upstreams: &[&Upstream]) -> Bootstrap {
        upstreams
            .iter()
            .fold(self, |b, u| b.with_cluster_address(&u.name, u.addr))
    }

    /// Static cluster `name` (panics if the bootstrap has none).
    fn cluster_mut(&mut self, name: &str) -> &mut Yaml {
        let Some(clusters) = self.0["static_resources"]["clusters"].as_sequence_mut() else {
            panic!("bootstrap has no static clusters");
        };
        clusters
            .iter_mut()
            .find(|c| c["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("bootstrap has no cluster {name}"))
    }

    /// Points static cluster `name` at `addr`.
    pub fn with_cluster_address(mut self, name: &str, addr: SocketAddr) -> Bootstrap {
        let cluster = self.cluster_mut(name);
        let sa = &mut cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            ["address"]["socket_address"];
        sa["address"] = Yaml::from(addr.ip().to_string());
        sa["port_value"] = Yaml::from(addr.port());
        self
    }

    /// Makes static cluster `name` speak HTTP/2 to its upstream (as
    /// `traffic-shift envoy --h2 NAME` writes it).
    pub fn with_http2(mut self, name: &str) -> Bootstrap {
        let cluster = self.cluster_mut(name);
        cluster["typed_extension_protocol_options"] = serde_yaml::from_str(
            r#"
envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
  "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
  explicit_http_config: {http2_protocol_options: {}}
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        self
    }

    /// The `config_discovery` of the traffic_shift HTTP filter, if it has one.
    pub fn config_discovery(&mut self) -> Option<&mut Yaml> {
        let hfs = self.0["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"]
            .as_sequence_mut()?;
        hfs.iter_mut()
            .find(|f| f["name"] == "traffic_shift")
            .map(|f| &mut f["config_discovery"])
            .filter(|c| !c.is_null())
    }

    /// Loads another .wasm (e.g. [`trap_wasm_path`]).
    pub fn with_wasm(mut self, path: &Path) -> Bootstrap {
        let p = path.to_string_lossy().into_owned();
        for_each_wasm(&mut self.0, &mut |cfg| {
            cfg["vm_config"]["code"]["local"]["filename"] = Yaml::from(p.clone());
        });
        self
    }

    /// Sets the traffic_shift filter's `failure_policy`.
    pub fn with_failure_policy(mut self, policy: &str) -> Bootstrap {
        for_each_wasm(&mut self.0, &mut |cfg| {
            cfg["failure_policy"] = Yaml::from(policy);
        });
        self
    }

    /// Replaces the traffic_shift plugin configuration (JSON text).
    pub fn with_plugin_config(mut self, json: &str) -> Bootstrap {
        for_each_wasm(&mut self.0, &mut |cfg| {
            cfg["configuration"]["value"] = Yaml::from(json.to_string());
        });
        self
    }

    /// The traffic_shift plugin configuration (JSON text).
    pub fn plugin_config(&self) -> String {
        let mut out = None;
        let mut copy = self.0.clone();
        for_each_wasm(&mut copy, &mut |cfg| {
            out = cfg["configuration"]["value"].as_str().map(str::to_string);
        });
        out.unwrap_or_else(|| panic!("bootstrap has no traffic_shift configuration"))
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(&self.0).unwrap_or_else(|e| panic!("cannot write YAML: {e}"))
    }
}

fn set_port(address: &mut Yaml, port: u16) {
    address["socket_address"]["port_value"] = Yaml::from(port);
}

/// The dynamic-module filter's `typed_config` carrying `plugin_json`.
pub fn module_typed_config(plugin_json: &str) -> Yaml {
    let module = format!(
        "'@type': {MODULE_FILTER_TYPE}\n\
         dynamic_module_config: {{name: traffic_shift}}\n\
         filter_name: traffic_shift\n\
         filter_config:\n  '@type': type.googleapis.com/google.protobuf.StringValue\n"
    );
    let mut m: Yaml =
        serde_yaml::from_str(&module).unwrap_or_else(|e| panic!("module filter YAML: {e}"));
    m["filter_config"]["value"] = Yaml::from(plugin_json);
    m
}

/// Calls `f` on the plugin configuration of every traffic_shift filter
/// (wasm: its `config`, with the JSON at `configuration.value`; module:
/// a view with the JSON at the same place, written back).
fn for_each_wasm(root: &mut Yaml, f: &mut dyn FnMut(&mut Yaml)) {
    for_each_filter(root, &mut |tc| match tc["@type"].as_str() {
        Some("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm") => {
            f(&mut tc["config"])
        }
        Some(MODULE_FILTER_TYPE) => {
            let mut view: Yaml =
                serde_yaml::from_str("configuration: {}").unwrap_or_else(|e| panic!("{e}"));
            view["configuration"]["value"] = tc["filter_config"]["value"].clone();
            f(&mut view);
            tc["filter_config"]["value"] = view["configuration"]["value"].clone();
        }
        _ => {}
    });
}

/// Calls `f` on the `typed_config` of every HTTP filter of every listener.
fn for_each_filter(root: &mut Yaml, f: &mut dyn FnMut(&mut Yaml)) {
    let Some(listeners) = root["static_resources"]["listeners"].as_sequence_mut() else {
        return;
    };
    for l in listeners {
        let Some(chains) = l["filter_chains"].as_sequence_mut() else {
            continue;
        };
        for chain in chains {
            let Some(filters) = chain["filters"].as_sequence_mut() else {
                continue;
            };
            for nf in filters {
                let Some(hfs) = nf["typed_config"]["http_filters"].as_sequence_mut() else {
                    continue;
                };
                for hf in hfs {
                    f(&mut hf["typed_config"]);
                }
            }
        }
    }
}

/// A running Envoy, killed and reaped on drop. Its log is printed if the
/// test is panicking.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    pub listener: SocketAddr,
    /// The bootstrap as run and the admin address file.
    _dir: tempfile::TempDir,
    /// Envoy's log (stderr): in the temporary directory, or where
    /// [`Envoy::start_logged`] was told.
    log_path: PathBuf,
}

/// Where [`Envoy::start_logged`] writes Envoy's output (files created or
/// truncated, kept after Envoy stops).
pub struct LogFiles {
    /// Envoy's log (its stderr).
    pub log: PathBuf,
    /// Its stdout (the shipped configs' access log).
    pub stdout: PathBuf,
}

/// Envoy exited (or never became ready) instead of serving.
#[derive(Debug)]
pub struct EnvoyFailed {
    pub exit_code: Option<i32>,
    pub log: String,
}

impl Envoy {
    /// Starts Envoy with one worker.
    pub async fn start(bootstrap: &Bootstrap) -> Result<Envoy, EnvoyFailed> {
        Self::start_with(bootstrap, 1).await
    }

    /// Starts Envoy with `concurrency` workers and waits until it is LIVE.
    pub async fn start_with(bootstrap: &Bootstrap, concurrency: u32) -> Result<Envoy, EnvoyFailed> {
        Self::start_inner(bootstrap, concurrency, None).await
    }

    /// [`Envoy::start_with`], with Envoy's log and stdout written to
    /// `files` (kept after it stops) instead of a temporary file and
    /// /dev/null.
    pub async fn start_logged(
        bootstrap: &Bootstrap,
        concurrency: u32,
        files: &LogFiles,
    ) -> Result<Envoy, EnvoyFailed> {
        Self::start_inner(bootstrap, concurrency, Some(files)).await
    }

    async fn start_inner(
        bootstrap: &Bootstrap,
        concurrency: u32,
        files: Option<&LogFiles>,
    ) -> Result<Envoy, EnvoyFailed> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let config = dir.path().join("envoy.yaml");
        let admin_path = dir.path().join("admin-address");
        let log = files.map_or_else(|| dir.path().join("envoy.log"), |f| f.log.clone());
        std::fs::write(&config, bootstrap.to_yaml()).unwrap_or_else(|e| panic!("{e}"));
        let create =
            |p: &Path| std::fs::File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let log_file = create(&log);
        let stdout = files.map_or_else(Stdio::null, |f| Stdio::from(create(&f.stdout)));
        let child = die_with_parent(&mut Command::new(envoy_bin()))
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--disable-hot-restart", "-l", "info"])
            .env(
                "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
                module_path().parent().unwrap_or(Path::new(".")),
            )
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e} (run `make envoy`)", envoy_bin()));
        let mut envoy = Envoy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            _dir: dir,
            log_path: log,
        };
        match envoy.wait_ready(&admin_path).await {
            Ok(()) => Ok(envoy),
            Err(exit_code) => {
                let _ = envoy.child.kill();
                let _ = envoy.child.wait();
                Err(EnvoyFailed {
                    exit_code,
                    log: envoy.log(),
                })
            }
        }
    }

    async fn wait_ready(&mut self, admin_path: &Path) -> Result<(), Option<i32>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(status.code());
            }
            if self.admin.port() == 0 {
                if let Some(a) = std::fs::read_to_string(admin_path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    self.admin = a;
                }
            }
            if self.admin.port() != 0 {
                let ready = client
                    .get(format!("http://{}/ready", self.admin))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if ready {
                    if let Some(addr) = self.listener_address(&client).await {
                        self.listener = addr;
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(None)
    }

    async fn listener_address(&self, client: &reqwest::Client) -> Option<SocketAddr> {
        let v: serde_json::Value = client
            .get(format!("http://{}/listeners?format=json", self.admin))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let sa = &v["listener_statuses"][0]["local_address"]["socket_address"];
        let port = u16::try_from(sa["port_value"].as_u64()?).ok()?;
        let ip = sa["address"].as_str()?.parse().ok()?;
        Some(SocketAddr::new(ip, port)).filter(|a| a.port() != 0)
    }

    /// `http://<listener><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listener, path)
    }

    /// GET on the admin interface, as text.
    pub async fn admin_get(&self, path: &str) -> String {
        reqwest::get(format!("http://{}{}", self.admin, path))
            .await
            .unwrap_or_else(|e| panic!("admin {path}: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("admin {path}: {e}"))
    }

    /// Gives Envoy's workers a hook to run, for the dynamic module: it
    /// hands a shadow's answer to the flow on the sending worker's next
    /// hook (README "Two builds"), so a test that waits for results while
    /// that worker is otherwise idle pokes it now and then. One GET of a
    /// path no test route matches (the monolith answers), on a new
    /// connection (another worker may take it). Nothing for the wasm build.
    pub async fn poke(&self) {
        if Build::current() != Build::Module {
            return;
        }
        let c = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_else(|e| panic!("client: {e}"));
        let _ = c.get(self.url("/__poke")).send().await;
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- envoy log (pid {}) ----\n{}\n---- end of envoy log ----",
                self.child.id(),
                self.log()
            );
        }
    }
}

/// What the upstream saw and who answered.
#[derive(Debug, Clone)]
pub struct Served {
    pub status: u16,
    /// The upstream's name, or `None` if Envoy answered itself.
    pub served_by: Option<String>,
    /// Request headers as the upstream received them.
    pub upstream_headers: serde_json::Map<String, serde_json::Value>,
}

/// One request through Envoy.
pub async fn send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Served {
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .unwrap_or_else(|e| panic!("bad method {method}: {e}"));
    let mut req = client.request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("request {url}: {e}"));
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    Served {
        status,
        served_by: body["served_by"].as_str().map(str::to_string),
        upstream_headers: body["headers"].as_object().cloned().unwrap_or_default(),
    }
}

/// GET `url` once per key with header `key_header: key`, `concurrency`
/// requests in flight; the served cluster of each, in key order.
pub async fn served_by_keys(
    client: &reqwest::Client,
    url: &str,
    key_header: &str,
    keys: &[String],
    concurrency: usize,
) -> Vec<String> {
    let mut out = vec![String::new(); keys.len()];
    let mut tasks = tokio::task::JoinSet::new();
    let chunk = keys.len().div_ceil(concurrency.max(1)).max(1);
    for (c, part) in keys.chunks(chunk).enumerate() {
        let client = client.clone();
        let url = url.to_string();
        let key_header = key_header.to_string();
        let part = part.to_vec();
        tasks.spawn(async move {
            let mut served = Vec::with_capacity(part.len());
            for k in &part {
                let s = send(&client, "GET", &url, &[(&key_header, k)]).await;
                assert_eq!(s.status, 200, "key {k}: status {}", s.status);
                served.push(s.served_by.unwrap_or_default());
            }
            (c * chunk, served)
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (start, served) = r.unwrap_or_else(|e| panic!("request task failed: {e}"));
        for (i, s) in served.into_iter().enumerate() {
            out[start + i] = s;
        }
    }
    out
}

/// Resident set size of process `pid` in KiB (0 if unknown).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `n` fresh random request ids (UUID v4, like Envoy generates).
pub fn random_ids(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect()
}

/// An HTTP client that keeps connections alive.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

/// Runs `envoy --mode validate -c FILE`; returns (success, combined output).
pub fn validate(config: &Path) -> (bool, String) {
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(config)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", envoy_bin()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The shipped `envoy/envoy.yaml` running with its three upstreams
/// (`monolith`, `auth_service`, `orders_service`) and a given plugin
/// configuration.
pub struct Stack {
    // Field order is drop order: Envoy goes before its upstreams.
    pub envoy: Envoy,
    pub upstreams: Vec<Upstream>,
}

/// Cluster names of the shipped `envoy/envoy.yaml`.
pub const CLUSTERS: [&str; 3] = ["monolith", "auth_service", "orders_service"];

impl Stack {
    /// Starts the stack with one Envoy worker; panics (with Envoy's log) if
    /// Envoy does not come up.
    pub async fn start(plugin_config: &str) -> Stack {
        Self::start_with(plugin_config, 1).await
    }

    pub async fn start_with(plugin_config: &str, concurrency: u32) -> Stack {
        let upstreams: Vec<Upstream> = CLUSTERS.iter().map(|n| Upstream::start(n)).collect();
        Self::start_on(plugin_config, concurrency, upstreams).await
    }

    /// Starts Envoy in front of the given upstreams (named like clusters).
    pub async fn start_on(
        plugin_config: &str,
        concurrency: u32,
        upstreams: Vec<Upstream>,
    ) -> Stack {
        let bootstrap = Bootstrap::shipped()
            .for_test()
            .with_plugin_config(plugin_config);
        Self::start_bootstrap(bootstrap, concurrency, upstreams).await
    }

    /// Starts `bootstrap` (already prepared with [`Bootstrap::for_test`]) in
    /// front of `upstreams`.
    pub async fn start_bootstrap(
        bootstrap: Bootstrap,
        concurrency: u32,
        upstreams: Vec<Upstream>,
    ) -> Stack {
        let refs: Vec<&Upstream> = upstreams.iter().collect();
        let bootstrap = bootstrap.with_upstreams(&refs);
        match Envoy::start_with(&bootstrap, concurrency).await {
            Ok(envoy) => Stack { envoy, upstreams },
            Err(f) => panic!("envoy did not start (exit {:?}):\n{}", f.exit_code, f.log),
        }
    }

    /// `envoy/envoy-ecds-grpc.yaml` with a control plane of its own
    /// (`xds::XdsServer`, FAIL_OPEN) serving `plugin_json` as `version`;
    /// returns once Envoy ACKed it.
    pub async fn start_ads(
        version: &str,
        plugin_json: &str,
        concurrency: u32,
        upstreams: Vec<Upstream>,
    ) -> (Stack, xds::XdsServer) {
        let server = xds::XdsServer::start(xds::PluginSpec {
            name: "traffic_shift".into(),
            root_id: "traffic_shift".into(),
            wasm_path: wasm_path().to_string_lossy().into_owned(),
            failure_policy: envoy_types::pb::envoy::extensions::wasm::v3::FailurePolicy::FailOpen,
        })
        .await
        .unwrap_or_else(|e| panic!("control plane: {e}"));
        server
            .push(version, plugin_json)
            .unwrap_or_else(|e| panic!("push {version}: {e}"));
        let bootstrap = Bootstrap::load(&repo_root().join("envoy/envoy-ecds-grpc.yaml"))
            .for_test()
            .with_cluster_address("xds", ([127, 0, 0, 1], server.port).into());
        let stack = Stack::start_bootstrap(bootstrap, concurrency, upstreams).await;
        assert_eq!(
            server.wait(version, Duration::from_secs(15)).await,
            Some(xds::Outcome::Acked),
            "Envoy did not ACK {version}"
        );
        (stack, server)
    }
}

/// One scrape of Envoy's `/stats/prometheus`, parsed (label values parsed,
/// not string-matched).
pub struct Metrics(pub Vec<prometheus_parse::Sample>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        // Envoy writes label-less samples as `name{} value`, which
        // prometheus-parse 0.2.5 skips; `name value` is the same sample.
        // The module's stats: the wasm build's names (see
        // MODULE_METRIC_PREFIX).
        let lines = text.lines().map(|l| {
            let l = l.replacen("{} ", " ", 1);
            Ok(match l.strip_prefix("# TYPE ") {
                Some(rest) => format!("# TYPE {}", rest.replacen(MODULE_METRIC_PREFIX, "", 1)),
                None => l.replacen(MODULE_METRIC_PREFIX, "", 1),
            })
        });
        let scrape = prometheus_parse::Scrape::parse(lines)
            .unwrap_or_else(|e| panic!("cannot parse /stats/prometheus: {e}"));
        Metrics(scrape.samples)
    }

    /// The value of the counter, gauge or untyped sample `name` whose label
    /// set is exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .iter()
            .filter(|s| s.metric == name && s.labels.len() == labels.len())
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .find_map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
    }

    /// Like [`Metrics::value`], panicking with the metric list if absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| {
            let ours: Vec<String> = self
                .names()
                .into_iter()
                .filter(|n| n.starts_with("traffic_shift"))
                .collect();
            panic!(
                "no sample {name}{labels:?} in /stats/prometheus; traffic_shift metrics: {ours:?}"
            )
        })
    }

    /// Every metric name (histograms under their `_bucket`, `_sum` and
    /// `_count` names, as PromQL sees them).
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for s in &self.0 {
            if matches!(s.value, prometheus_parse::Value::Histogram(_)) {
                out.insert(format!("{}_bucket", s.metric));
            } else {
                out.insert(s.metric.clone());
            }
        }
        out
    }
}

/// How long the filter may hold counts before Envoy sees them: each worker
/// accumulates its counters in VM memory and flushes them on its 1 s tick
/// (src/filter/counters.rs), plus a margin for a busy machine.
pub const COUNTER_FLUSH: Duration = Duration::from_millis(1_300);

impl Envoy {
    /// A parsed scrape of `/stats/prometheus`, taken once every count of
    /// the requests made so far has been flushed (one tick plus a margin).
    pub async fn metrics(&self) -> Metrics {
        tokio::time::sleep(COUNTER_FLUSH).await;
        self.metrics_now().await
    }

    /// A parsed scrape of `/stats/prometheus`, now.
    pub async fn metrics_now(&self) -> Metrics {
        Metrics::parse(&self.admin_get("/stats/prometheus").await)
    }

    /// Scrapes until `ready` holds (histograms appear only after Envoy's
    /// stats flush, every 5 s by default); the last scrape either way.
    pub async fn metrics_when(&self, ready: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let m = self.metrics_now().await;
            if ready(&m) || Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Envoy {
    /// The value of one stat from `/stats?format=json` (numbers and text
    /// readouts such as ECDS `version_text`).
    pub async fn stat(&self, name: &str) -> Option<serde_json::Value> {
        let text = self
            .admin_get(&format!(
                "/stats?format=json&filter=^{}$",
                name.replace('.', "\\.")
            ))
            .await;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["stats"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["value"].clone())
    }

    /// A numeric stat, 0 if absent.
    pub async fn counter(&self, name: &str) -> u64 {
        self.stat(name).await.and_then(|v| v.as_u64()).unwrap_or(0)
    }

    /// Polls until `counter(name) >= at_least` (15 s at most); the last value.
    pub async fn wait_counter(&self, name: &str, at_least: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.counter(name).await;
            if v >= at_least || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// File-based ECDS for a test: a directory Envoy watches, holding the
/// resource file written from the shipped `envoy/ecds/traffic_shift.yaml`.
pub struct EcdsFile {
    pub dir: tempfile::TempDir,
    template: Yaml,
    /// Which filter the resource configures.
    build: Build,
}

impl EcdsFile {
    pub const FILE: &'static str = "traffic_shift.yaml";

    /// Writes version `version` with `plugin_json` before returning; the
    /// filter of the build under test.
    pub fn new(version: &str, plugin_json: &str) -> EcdsFile {
        Self::for_build(Build::current(), version, plugin_json)
    }

    /// [`EcdsFile::new`] for the filter of `build`.
    pub fn for_build(build: Build, version: &str, plugin_json: &str) -> EcdsFile {
        let path = repo_root().join("envoy/ecds/traffic_shift.yaml");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let ecds = EcdsFile {
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")),
            template: serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}")),
            build,
        };
        ecds.write(version, plugin_json);
        ecds
    }

    /// Replaces the resource atomically (write aside, rename over), as the
    /// README tells users to.
    pub fn write(&self, version: &str, plugin_json: &str) {
        let mut doc = self.template.clone();
        doc["version_info"] = Yaml::from(version);
        if self.build == Build::Module {
            doc["resources"][0]["typed_config"] = module_typed_config(plugin_json);
        } else {
            let cfg = &mut doc["resources"][0]["typed_config"]["config"];
            cfg["configuration"]["value"] = Yaml::from(plugin_json);
            cfg["vm_config"]["code"]["local"]["filename"] =
                Yaml::from(wasm_path().to_string_lossy().into_owned());
        }
        let tmp = self.dir.path().join(".next.yaml");
        let text = serde_yaml::to_string(&doc).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, self.dir.path().join(Self::FILE)).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Writes `plugin_json` as `version` and waits until Envoy applied it on
    /// every worker (`update_success` moved, then `config_reload`; a refused
    /// update moves `config_reload` too, so it alone proves nothing).
    pub async fn apply(&self, envoy: &Envoy, version: &str, plugin_json: &str) {
        const ECDS: &str = "extension_config_discovery.http_filter.traffic_shift";
        let reloads = envoy.counter(&format!("{ECDS}.config_reload")).await;
        let accepted = envoy.counter(&format!("{ECDS}.update_success")).await;
        self.write(version, plugin_json);
        let deadline = Instant::now() + Duration::from_secs(15);
        while envoy.counter(&format!("{ECDS}.update_success")).await <= accepted {
            assert!(Instant::now() < deadline, "Envoy never applied {version}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        envoy
            .wait_counter(&format!("{ECDS}.config_reload"), reloads + 1)
            .await;
    }

    /// `envoy/envoy-ecds-file.yaml` prepared for a test, watching this
    /// directory.
    pub fn bootstrap(&self) -> Bootstrap {
        let mut b = Bootstrap::load(&repo_root().join("envoy/envoy-ecds-file.yaml")).for_test();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let Some(cd) = b.config_discovery() else {
            panic!("envoy-ecds-file.yaml: traffic_shift has no config_discovery");
        };
        let pcs = &mut cd["config_source"]["path_config_source"];
        pcs["path"] = Yaml::from(format!("{dir}/{}", Self::FILE));
        pcs["watched_directory"]["path"] = Yaml::from(dir);
        if self.build == Build::Module {
            cd["type_urls"] = Yaml::Sequence(vec![Yaml::from(MODULE_FILTER_TYPE)]);
        }
        b
    }
}

/// Continuous load for the duration of a test step: `connections` tasks
/// each sending GETs (fresh random request id each) round-robin over
/// `urls`, until stopped or 120 s have passed.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: tokio::task::JoinSet<LoadReport>,
}

/// What a [`Load`] saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub requests: u64,
    pub non_2xx: u64,
    pub connection_errors: u64,
    /// The first few failures, for the assertion message.
    pub failures: Vec<String>,
}

impl Load {
    pub fn start(urls: Vec<String>, connections: usize) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..connections {
            let stop = stop.clone();
            let urls = urls.clone();
            tasks.spawn(async move {
                let client = reqwest::Client::new();
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut r = LoadReport::default();
                let mut i = c;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    let url = &urls[i % urls.len()];
                    i += 1;
                    r.requests += 1;
                    let id = uuid::Uuid::new_v4().to_string();
                    match client.get(url).header("x-request-id", &id).send().await {
                        Ok(resp) if resp.status().is_success() => {
                            let _ = resp.bytes().await;
                        }
                        Ok(resp) => {
                            r.non_2xx += 1;
                            if r.failures.len() < 5 {
                                r.failures.push(format!("{url}: {}", resp.status()));
                            }
                        }
                        Err(e) => {
                            r.connection_errors += 1;
                            if r.failures.len() < 5 {
                                r.failures.push(format!("{url}: {e}"));
                            }
                        }
                    }
                }
                r
            });
        }
        Load { stop, tasks }
    }

    /// Stops the load and sums what every connection saw.
    pub async fn stop(mut self) -> LoadReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = LoadReport::default();
        while let Some(r) = self.tasks.join_next().await {
            let r = r.unwrap_or_else(|e| panic!("load task: {e}"));
            total.requests += r.requests;
            total.non_2xx += r.non_2xx;
            total.connection_errors += r.connection_errors;
            total.failures.extend(r.failures);
        }
        total
    }
}
