//! One network namespace per node, joined by veth pairs to a bridge in the root namespace.
//!
//! Layout for a run with name prefix `P` (`rkf<pid><letter>`, at most 11 characters) and
//! subnet `10.231.X.0/24` (X chosen free under a lock, so parallel runs never share one):
//! - bridge `Pbr` in the root namespace with address `10.231.X.254`: the test process talks
//!   to every node through it, and partitions never match that address;
//! - namespace `Pn<i>` for node i (1-based) holding `eth0` = `10.231.X.i/24` and `lo`; its peer
//!   `Pv<i>` is a port of the bridge.
//!
//! Each node runs inside its own namespace, so its outgoing connections carry its own address
//! as source, and a partition is plain iptables rules inside the namespaces (INPUT from and
//! OUTPUT to the other side's addresses dropped). Everything is torn down on drop; namespaces
//! and links left by an earlier run whose process is gone are removed at setup.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};

/// Every name this harness creates starts with this; the pid follows.
pub const NAME_PREFIX: &str = "rkf";
const LOCK_PATH: &str = "/tmp/ringkv-fault-net.lock";
/// Second octet of every address: 10.231.X.Y.
const NET_OCTET: u8 = 231;

static RUN_LETTER: AtomicU8 = AtomicU8::new(0);

/// Runs a command, returning its stdout or a message with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    run_with_input(program, args, None)
}

fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{program} {}`: {e}", args.join(" ")))?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("writing to `{program}`: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for `{program}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The network of one run: a bridge and one namespace per node.
pub struct Net {
    prefix: String,
    subnet: u8,
    nodes: usize,
    /// Undirected pairs of 0-based node indexes whose traffic is currently dropped.
    cut: BTreeSet<(usize, usize)>,
}

/// An exclusive `flock` on the allocation lock file, released on drop.
struct AllocationLock(std::fs::File);

impl AllocationLock {
    fn take() -> Result<AllocationLock, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .map_err(|e| format!("cannot open {LOCK_PATH}: {e}"))?;
        // SAFETY: flock on a file descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(format!(
                "flock {LOCK_PATH}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(AllocationLock(file))
    }
}

impl Drop for AllocationLock {
    fn drop(&mut self) {
        // SAFETY: unlocking the descriptor locked in `take`.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The pid embedded in a name this harness created (`rkf<pid><letter>...`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and links of earlier runs whose process is gone.
fn remove_stale() {
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(pid) = owner_pid(name) else { continue };
            if pid_alive(pid) {
                continue;
            }
            eprintln!("fault harness: removing stale namespace {name} (run {pid} is gone)");
            // Node processes of that run were started by this harness inside this namespace.
            if let Ok(pids) = run("ip", &["netns", "pids", name]) {
                for p in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    // SAFETY: signalling a process of a dead harness run, by its id.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
            let _ = run("ip", &["netns", "del", name]);
        }
    }
    if let Ok(links) = run("ip", &["-o", "link", "show"]) {
        for line in links.lines() {
            // "7: rkf123abr: <...>" or "8: rkf123av1@if2: <...>"
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            let Some(pid) = owner_pid(name) else { continue };
            if !pid_alive(pid) {
                eprintln!("fault harness: removing stale link {name} (run {pid} is gone)");
                let _ = run("ip", &["link", "del", name]);
            }
        }
    }
}

/// Subnets (third octet) already used by an address in the root namespace.
fn used_subnets() -> Result<BTreeSet<u8>, String> {
    let out = run("ip", &["-o", "-4", "addr", "show"])?;
    let mut used = BTreeSet::new();
    for word in out.split_whitespace() {
        let addr = word.split('/').next().unwrap_or("");
        if let Ok(ip) = addr.parse::<Ipv4Addr>() {
            let o = ip.octets();
            if o[0] == 10 && o[1] == NET_OCTET {
                used.insert(o[2]);
            }
        }
    }
    Ok(used)
}

impl Net {
    /// Creates the bridge and `nodes` namespaces. Errors say what is missing.
    pub fn create(nodes: usize) -> Result<Net, String> {
        assert!((1..=250).contains(&nodes));
        let letter = (b'a' + RUN_LETTER.fetch_add(1, Ordering::Relaxed) % 26) as char;
        let prefix = format!("{NAME_PREFIX}{}{letter}", std::process::id());
        let lock = AllocationLock::take()?;
        remove_stale();
        let used = used_subnets()?;
        let start = (std::process::id() % 250) as u8;
        let subnet = (0..250u16)
            .map(|k| ((start as u16 + k) % 250 + 1) as u8)
            .find(|x| !used.contains(x))
            .ok_or("no free 10.231.X.0/24 subnet")?;
        let net = Net {
            prefix,
            subnet,
            nodes,
            cut: BTreeSet::new(),
        };
        // From here on, drop tears down whatever was created.
        let bridge = net.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", net.host_addr()),
                "dev",
                &bridge,
            ],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;
        drop(lock);
        for i in 0..nodes {
            net.add_namespace(i)?;
        }
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// The namespace of node `i` (0-based).
    pub fn namespace(&self, i: usize) -> String {
        format!("{}n{}", self.prefix, i + 1)
    }

    /// The address of node `i` (0-based) inside its namespace.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, NET_OCTET, self.subnet, i as u8 + 1)
    }

    /// The test process's address, on the bridge.
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, NET_OCTET, self.subnet, 254)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn add_namespace(&self, i: usize) -> Result<(), String> {
        let ns = self.namespace(i);
        let host_end = format!("{}v{}", self.prefix, i + 1);
        let ns_end = format!("{}p{}", self.prefix, i + 1);
        run("ip", &["netns", "add", &ns])?;
        run(
            "ip",
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ],
        )?;
        run("ip", &["link", "set", &ns_end, "netns", &ns])?;
        run("ip", &["link", "set", &host_end, "master", &self.bridge()])?;
        run("ip", &["link", "set", &host_end, "up"])?;
        let exec = |args: &[&str]| -> Result<String, String> {
            let mut all = vec!["netns", "exec", ns.as_str()];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        exec(&["ip", "link", "set", &ns_end, "name", "eth0"])?;
        exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.addr(i)),
            "dev",
            "eth0",
        ])?;
        exec(&["ip", "link", "set", "eth0", "up"])?;
        exec(&["ip", "link", "set", "lo", "up"])?;
        // The filter table must be usable in the namespace, or partitions would silently
        // do nothing.
        self.load_rules(i, &[])?;
        Ok(())
    }

    /// Replaces node `i`'s filter table: drop everything from and to `peers`.
    fn load_rules(&self, i: usize, peers: &[usize]) -> Result<(), String> {
        let mut rules = String::from(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
        );
        for &j in peers {
            rules.push_str(&format!("-A INPUT -s {}/32 -j DROP\n", self.addr(j)));
            rules.push_str(&format!("-A OUTPUT -d {}/32 -j DROP\n", self.addr(j)));
        }
        rules.push_str("COMMIT\n");
        let ns = self.namespace(i);
        run_with_input(
            "ip",
            &["netns", "exec", &ns, "iptables-restore", "-w"],
            Some(&rules),
        )?;
        Ok(())
    }

    /// Drops all traffic between the pairs of nodes in `cut` (0-based, either order), on top
    /// of whatever is already cut.
    pub fn cut(&mut self, pairs: &[(usize, usize)]) {
        for &(a, b) in pairs {
            assert_ne!(a, b);
            self.cut.insert((a.min(b), a.max(b)));
        }
        self.apply();
    }

    /// Removes every rule: all nodes see each other again.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.apply();
    }

    /// The currently cut pairs.
    pub fn cut_pairs(&self) -> Vec<(usize, usize)> {
        self.cut.iter().copied().collect()
    }

    fn apply(&self) {
        for i in 0..self.nodes {
            let peers: Vec<usize> = self
                .cut
                .iter()
                .filter_map(|&(a, b)| {
                    if a == i {
                        Some(b)
                    } else if b == i {
                        Some(a)
                    } else {
                        None
                    }
                })
                .collect();
            self.load_rules(i, &peers)
                .unwrap_or_else(|e| panic!("changing the partition rules: {e}"));
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let ns = self.namespace(i);
            // Deleting the namespace destroys its end of the veth pair, and so the pair.
            let _ = run("ip", &["netns", "del", &ns]);
            let _ = run(
                "ip",
                &["link", "del", &format!("{}v{}", self.prefix, i + 1)],
            );
        }
        let _ = run("ip", &["link", "del", &self.bridge()]);
    }
}
