//! The help text, printed by `main` and by `cluster` on bad arguments.

pub const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  deps               build/install the test peers (consul, nomad, moto) into the
                     cache and print `export` lines: eval \"$(cargo xtask deps)\"
  test [ARGS...]     deps, then cargo fmt --check, clippy -D warnings,
                     cargo test --workspace [ARGS...] with the peers' env set,
                     `cluster test`, a 4-minute `cluster soak`, a short bench and
                     the lifecycle and disaster verbs on a fresh cluster
  cluster up [--topology small|seed]
                     build the local image and boot the cluster in nspawn VMs
                     (snapshots to a bucket in moto's S3 configured), deploy the
                     web job and print its answers; leaves it running
  cluster status     check the running cluster
  cluster down       stop it and remove everything it made
  cluster test       the fault scenario on a fresh small cluster, then down
  cluster upgrade    on the running cluster: every server's agent restarted at
                     once with a new config version, then back (JSON on stdout)
  cluster exec NODE -- CMD...
                     run CMD inside a VM of the running cluster, e.g.
                     `cluster exec server1 -- kraken-agent doctor`
  cluster roll [--group server|client|all]
                     on the running cluster: an instance refresh, one instance
                     at a time through the groups' lifecycle hooks (JSON)
  cluster launch GROUP
                     one more instance of GROUP (server, client) through its
                     launching hook (JSON on stdout)
  cluster terminate NODE [--spot|--poweroff]
                     scale-in of NODE through its terminating hook, a spot
                     interruption notice, or a power-off from inside with no
                     lifecycle state (a server is then replaced) (JSON on
                     stdout)
  cluster warm add GROUP | warm start NODE
                     one instance of GROUP into its warm pool (it must join
                     nothing), or NODE put in service, timed to an eligible
                     Nomad node (JSON on stdout)
  cluster lose-servers
                     on the running cluster: every server destroyed at once with
                     its data and replaced at once; the cluster must recover
                     and every client's tokens work (JSON on stdout)
  cluster escape     on the running cluster: raw_exec, exec and Docker tasks on
                     a client try IMDS, the node's token files and TLS keys,
                     and SSM; every attempt must be refused and the agent
                     still reach IMDS (JSON on stdout)
  cluster restore    on the running cluster: a snapshot saved, every VM
                     destroyed (moto's store and bucket stay), a new cluster
                     booted that restores it at its bootstrap; KV, ACL tokens,
                     Nomad's ACLs and the web job must be back (JSON on stdout);
                     leaves the new cluster running
  cluster soak [--minutes M] [--leaf-lifetime-secs S]
                     a fresh small cluster with S-second certificates under
                     load for M minutes (JSON on stdout), then down
  cluster bench [--topology small|seed] [--scenario simultaneous|staggered|add-client]
                [--runs N] [--discovery agent|auto-join|both] [--stagger-secs S]
                     join timings (every VM at once; clients first, then the
                     servers S seconds apart; or clients added to a running
                     cluster, agent start to node eligible), each node's READY
                     distribution, EC2 calls and agent memory, against Consul's
                     and Nomad's own cloud auto-join (JSON on stdout)

environment:
  KRAKEN_CACHE       cache directory (default: ~/.cache/kraken)
  CARGO_TARGET_DIR   for `test` and `cluster`; defaults to the checkout's target/";
