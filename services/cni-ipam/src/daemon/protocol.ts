/**
 * The wire between the thin `berth-ipam` plugin (services/cni-ipam/thin, the binary containerd
 * executes) and the node's resident allocator (the cni-ipam daemon). docs/ipam.md "The resident
 * allocator" says the same in prose; the Go plugin speaks it byte for byte.
 *
 * One request per connection on a unix socket (mode 600 in a directory of mode 700: root only):
 *   plugin → daemon: one JSON object, then a newline: {"v":1,"env":{CNI_COMMAND,…},"stdin":"<netconf>"}
 *   daemon → plugin: one JSON object, then a newline: {"exitCode":0,"stdout":"<result or error JSON>"}
 * and the daemon closes. `stdout` is exactly what the direct plugin would have printed, so the thin
 * plugin prints it and exits with `exitCode`.
 *
 * The thin plugin falls back to the direct plugin (allocating over etcd itself, as before) when it
 * cannot connect, and when the connection ends before a whole answer (the daemon died mid-request):
 * ADD and DEL are idempotent per container and interface, CHECK only reads, so doing the command
 * again is always safe. The fallback is run with BERTH_IPAM_FALLBACK=<why> in its environment and
 * counts itself in etcd (keys.ipamFallbacks), which `cnictl stats` shows beside the daemon's own
 * counters.
 *
 * `{"v":1,"stats":true}` asks for the daemon's counters instead (`cnictl stats`): the answer is
 * {"exitCode":0,"stdout":"<DaemonStats JSON>"}.
 */

export const PROTOCOL_VERSION = 1;

/** Where the socket is when the network conf names none (`ipam.socket`). */
export const DEFAULT_SOCKET = '/run/berth/ipam.sock';

/** The CNI variables the plugin forwards (any other variable of its environment stays behind). */
export const FORWARDED_ENV = [
  'CNI_COMMAND',
  'CNI_CONTAINERID',
  'CNI_NETNS',
  'CNI_IFNAME',
  'CNI_ARGS',
  'CNI_PATH',
] as const;

/** The largest request the daemon reads (a network conf with a prevResult is a few KB). */
export const MAX_REQUEST_BYTES = 1 << 20;

export type CommandRequest = { v: typeof PROTOCOL_VERSION; env: Partial<Record<string, string>>; stdin: string };
export type StatsRequest = { v: typeof PROTOCOL_VERSION; stats: true };
export type DaemonRequest = CommandRequest | StatsRequest;

export type DaemonResponse = { exitCode: number; stdout: string };

/** What the thin plugin sets when it runs the direct plugin instead of asking the daemon. */
export const FALLBACK_ENV = 'BERTH_IPAM_FALLBACK';
export type FallbackReason = 'no-daemon' | 'daemon-failed';

/** The daemon's counters since it started (`cnictl stats`, and berth_ipam_daemon_* on /metrics). */
export type DaemonStats = {
  startedAt: string;
  socket: string;
  /** Per CNI command: requests answered, failures among them, and latency in the daemon (ms). */
  commands: Record<string, { requests: number; failures: number; p50Ms: number; p99Ms: number }>;
  /** Transactions that carried more than one request, and the requests they carried. */
  batches: { transactions: number; requests: number; largest: number };
  /** Per cell the daemon serves: whether its view of the cell's blocks is synced with etcd. */
  cells: Record<string, { blocks: number; synced: boolean }>;
};
