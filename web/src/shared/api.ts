// Types and helpers for the gateway's HTTP contract (same origin as the pages).

export interface ChatMessage {
  role: "system" | "user" | "assistant";
  content: string;
}

export interface RouteHop {
  peer_id: string;
  start: number;
  end: number;
}

/** The `swarmllm` extension object on the final chunk of a streamed completion. */
export interface SwarmInfo {
  route: RouteHop[];
  tokens_per_second: number | null;
  time_to_first_token: number | null;
  completion_tokens: number | null;
  decoding?: string;                 // "ring", "speculative" or "plain"
  verification?: {                   // what was checked of the servers' work (docs/verification.md)
    mode: string; steps_checked: number; mismatches: number; banned: string[]; unverifiable: string[];
  } | null;
}

export interface ModelSummary {
  model_id: string;
  n_blocks: number;
  coverage: number[];
  complete: boolean;
}

export interface NodeInfo {
  peer_id: string;
  model_id: string;
  start: number;
  end: number;
  throughput: number;
  state: "online" | "joining" | "leaving" | string;
  active_sessions: number;
  free_cache_tokens: number;
  protocol_version: string | number;
  rtt_ms: number | null;
  software_version: string;
  compute_dtype?: string;
  quant?: string;
  kv_dtype?: string;
  ring?: boolean;
  price?: number;            // credits per 1,000 tokens the node asks (0 = free)
  credits?: number | null;   // credits this gateway's ledger settled for the node; null: no ledger
}

/** Demand the gateways publish for one model against the supply its nodes announce (both claims). */
export interface ModelDemand {
  model_id: string;
  covered: boolean;
  gateways: number;
  demand_tokens_per_minute: number;
  demand_requests_per_minute: number;
  queue_length: number;
  supply_tokens_per_minute: number;
  warning: string | null;
}

export interface SwarmSnapshot {
  updated_at: number;
  models: ModelSummary[];
  nodes: NodeInfo[];
  throughput_history: { t: number; tokens_per_second: number }[];
  active_sessions: number;
  demand?: ModelDemand[];
}

/** An error carrying the message of an OpenAI-style `{"error": {...}}` body. */
export class ApiError extends Error {
  status: number;
  retryAfter: number | null;
  constructor(message: string, status: number, retryAfter: number | null = null) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** Builds an ApiError from a non-2xx response, preferring the JSON body's error.message. */
export async function errorFromResponse(res: Response): Promise<ApiError> {
  let message = `${res.status} ${res.statusText}`.trim();
  try {
    const text = await res.text();
    try {
      const body = JSON.parse(text);
      const m = body?.error?.message ?? body?.detail ?? body?.message;
      if (typeof m === "string" && m) message = m;
      else if (m) message = JSON.stringify(m);
    } catch {
      if (text.trim()) message = text.trim().slice(0, 500);
    }
  } catch {
    /* body unreadable: keep the status line */
  }
  const ra = res.headers.get("Retry-After");
  const retryAfter = ra !== null && ra.trim() !== "" && !isNaN(Number(ra)) ? Number(ra) : null;
  return new ApiError(message, res.status, retryAfter);
}

/**
 * Reads a `text/event-stream` body and yields the `data:` payload of each event
 * (multi-line data joined with "\n"). EventSource can't POST, so the chat uses this.
 */
export async function* readSSE(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  let data: string[] = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).replace(/\r$/, "");
        buf = buf.slice(nl + 1);
        if (line === "") {
          if (data.length) yield data.join("\n");
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        } // comments (":") and other fields are ignored
      }
    }
    if (buf.startsWith("data:")) data.push(buf.slice(5).replace(/^ /, ""));
    if (data.length) yield data.join("\n");
  } finally {
    reader.releaseLock();
  }
}

/** `…a1b2c3d4`: the last 8 characters of a peer id. */
export function shortPeer(peerId: string): string {
  return peerId.length > 8 ? `…${peerId.slice(-8)}` : peerId;
}

export function fmtNum(x: number | null | undefined, digits = 1): string {
  return x === null || x === undefined || !isFinite(x) ? "–" : x.toFixed(digits);
}

/** A node's own report: GET /api/node on its local status page (server/status_http.py). */
export interface NodeReport {
  peer_id: string | null;
  model: string | null;
  start: number;
  end: number;
  state: "starting" | "serving" | "paused" | "draining" | string;
  paused_reason: string | null;
  uptime_seconds: number;
  sessions_served: number;
  sessions_active: number;
  tokens_served: number;        // positions computed for clients
  steps_served: number;
  bytes_up: number;             // stream payload bytes
  bytes_down: number;
  max_upload_bps: number | null;    // bits per second; null = no cap
  max_download_bps: number | null;
  throughput: number;
  credits: { total: number; by_gateway: Record<string, number> } | null;
  version: string;
  protocol_version: number;
  update: { available: string | null; state: string } | null;
}

/** 1536 -> "1.5 KiB". */
export function fmtBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let x = n;
  while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
  return `${i === 0 ? x.toFixed(0) : x.toFixed(1)} ${units[i]}`;
}

/** 1e6 -> "1 Mbit/s" (a rate in bits per second). */
export function fmtBits(bps: number | null | undefined): string {
  if (bps === null || bps === undefined || !isFinite(bps)) return "no cap";
  const units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s"];
  let i = 0;
  let x = bps;
  while (x >= 1000 && i < units.length - 1) { x /= 1000; i++; }
  return `${Number(x.toFixed(1))} ${units[i]}`;
}

/** 3725 -> "1 h 2 min". */
export function fmtDuration(seconds: number): string {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${s % 60} s`;
  return `${s} s`;
}
