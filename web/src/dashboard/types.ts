// The dashboard's additive /api/swarm fields (issue 16; gateway/swarm_status.py, swarm_history.py).
import type { NodeInfo, RouteHop, SwarmSnapshot } from "../shared/api";

/** A node row with the counters its record announces (claims) and the tokens/s derived from them. */
export interface NodeCounters extends NodeInfo {
  uptime_seconds?: number;
  memory_bytes?: number;
  cpu_percent?: number;                      // process CPU over its last announce period; 100 = one core
  tokens_served?: number;                    // positions computed through its span since it started
  bytes_sent?: number;                       // stream payload bytes up
  bytes_received?: number;                   // ... and down
  announced_tokens_per_second?: number | null;  // from consecutive records' tokens_served (bounded)
}

export interface TimelineEvent {
  t: number;
  kind: "joined" | "departed" | "moved" | string;
  peer_id: string;
  model_id: string;
  start: number;
  end: number;
  initial: boolean;   // seen on the gateway's first read of the swarm: it cannot tell when they joined
  reason?: string;    // departures: "announced leaving" or "records expired"
}

export interface CoverageHistory {
  model_id: string;
  samples: { t: number; coverage: number[] }[];
}

export interface AnnouncedThroughput {
  t: number;
  tokens_per_second: number;
  per_model: Record<string, number>;
}

export interface Chain {
  model_id: string;
  route: RouteHop[];
  since: number;
  tokens: number;
  decoding: string;
}

export interface JoinCommand {
  command: string;
  token: string | null;
  join?: string;
  by_address: string | null;
  note: string | null;
}

export interface DashboardSnapshot extends SwarmSnapshot {
  nodes: NodeCounters[];
  timeline?: TimelineEvent[];
  coverage_history?: CoverageHistory[];
  announced_throughput_history?: AnnouncedThroughput[];
  chains?: Chain[];
  join?: JoinCommand | null;
}
