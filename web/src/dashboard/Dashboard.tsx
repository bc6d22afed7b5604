import { useEffect, useState } from "react";
import { type ModelDemand, type ModelSummary, type NodeInfo, fmtBytes, fmtDuration, fmtNum, shortPeer } from "../shared/api";
import "./dashboard.css";
import { AgentEnv, Chains, CoverageOverTime, JoinBox, Timeline } from "./History";
import type { DashboardSnapshot, NodeCounters } from "./types";
import { type ConnMode, useSwarm } from "./useSwarm";

const STALE_AFTER_S = 10;

/** Runs of uncovered blocks, e.g. [[10, 19], [25, 25]] (inclusive). */
export function gaps(coverage: number[]): [number, number][] {
  const out: [number, number][] = [];
  coverage.forEach((c, i) => {
    if (c > 0) return;
    const last = out[out.length - 1];
    if (last && last[1] === i - 1) last[1] = i;
    else out.push([i, i]);
  });
  return out;
}

function coverageStatus(m: ModelSummary): { ok: boolean; text: string } {
  const g = gaps(m.coverage);
  if (m.complete && g.length === 0) {
    const min = m.coverage.length ? Math.min(...m.coverage) : 0;
    return { ok: true, text: `complete — every block served (at least ${min} server${min === 1 ? "" : "s"} each)` };
  }
  if (g.length === 0) return { ok: false, text: "not servable yet (nodes still joining)" };
  const spans = g.map(([a, b]) => (a === b ? `${a}` : `${a}–${b}`)).join(", ");
  const missing = g.reduce((n, [a, b]) => n + b - a + 1, 0);
  return { ok: false, text: `gap: block${missing === 1 ? "" : "s"} ${spans} (${missing} of ${m.n_blocks} unserved)` };
}

function level(count: number): number {
  return count <= 0 ? 0 : Math.min(count, 3);
}

export function Coverage({ models }: { models: ModelSummary[] }) {
  if (!models.length) return <p className="muted">No models announced by the swarm.</p>;
  return (
    <>
      {models.map((m) => {
        const st = coverageStatus(m);
        return (
          <div className="model-cov" key={m.model_id} data-testid="model-coverage" data-model={m.model_id}>
            <div className="model-cov-head">
              <strong>{m.model_id}</strong>
              <span className="muted">{m.n_blocks} blocks</span>
              <span className={st.ok ? "status-ok" : "status-gap"} data-testid="coverage-status">{st.text}</span>
            </div>
            <div className="cov-grid">
              {m.coverage.map((c, i) => (
                <div
                  key={i}
                  className="cov-cell"
                  data-testid="coverage-cell"
                  data-count={c}
                  data-level={level(c)}
                  title={`block ${i}: ${c} server${c === 1 ? "" : "s"}`}
                >
                  {c}
                </div>
              ))}
            </div>
          </div>
        );
      })}
      <div className="legend">
        <span>Cell = one transformer block, number = servers covering it:</span>
        <span><i className="cov-cell" data-level="0" /> 0 (gap)</span>
        <span><i className="cov-cell" data-level="1" /> 1</span>
        <span><i className="cov-cell" data-level="2" /> 2</span>
        <span><i className="cov-cell" data-level="3" /> 3+</span>
      </div>
    </>
  );
}

function fmtClock(t: number): string {
  return new Date(t * 1000).toLocaleTimeString();
}

function ThroughputChart({ history, testid = "throughput-chart", label = "swarm throughput over time" }:
  { history: { t: number; tokens_per_second: number }[]; testid?: string; label?: string }) {
  const W = 600, H = 160;
  const pts = [...history].sort((a, b) => a.t - b.t);
  const maxV = Math.max(1, ...pts.map((p) => p.tokens_per_second)) * 1.15;
  const t0 = pts.length ? pts[0].t : 0;
  const t1 = pts.length ? pts[pts.length - 1].t : 1;
  const span = Math.max(t1 - t0, 1e-6);
  const xy = pts.map((p) => [
    pts.length === 1 ? W : ((p.t - t0) / span) * W,
    H - (Math.max(0, p.tokens_per_second) / maxV) * H,
  ]);
  const line = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  const area = xy.length ? `M${xy[0][0]},${H} L${line.replace(/ /g, " L")} L${xy[xy.length - 1][0]},${H} Z` : "";
  return (
    <div className="chart" data-testid={testid}>
      <div className="chart-axis"><span>{fmtNum(maxV, 1)} tok/s</span></div>
      <svg viewBox={`0 0 ${W} ${H}`} preserveAspectRatio="none" role="img" aria-label={label}>
        {[0.25, 0.5, 0.75].map((f) => <line key={f} className="grid" x1={0} x2={W} y1={H * f} y2={H * f} />)}
        <line className="grid" x1={0} x2={W} y1={H - 0.5} y2={H - 0.5} />
        {xy.length > 0 && <path className="area" d={area} />}
        {xy.length > 0 && <polyline className="line" points={line} />}
      </svg>
      <div className="chart-axis">
        {pts.length ? (
          <><span>{fmtClock(t0)}</span><span>{fmtClock(t1)}</span></>
        ) : (
          <span>no data yet</span>
        )}
      </div>
    </div>
  );
}

const SHORT_DTYPE: Record<string, string> = { bfloat16: "bf16", float16: "fp16", float32: "fp32" };

/** "bf16 · int4 · kv int8 · ring": how a node computes and stores, from its record. */
export function precision(n: NodeInfo): string {
  const parts = [SHORT_DTYPE[n.compute_dtype ?? ""] ?? n.compute_dtype ?? "?"];
  if (n.quant && n.quant !== "none") parts.push(n.quant);
  if (n.kv_dtype && n.kv_dtype !== "auto") parts.push(`kv ${n.kv_dtype}`);
  if (n.ring) parts.push("ring");
  return parts.join(" · ");
}

/** A count in human units: 1234567 -> "1.2 M". */
export function fmtCount(n: number | null | undefined): string {
  if (n === null || n === undefined || !isFinite(n)) return "–";
  const units = ["", " k", " M", " G", " T"];
  let i = 0;
  let x = n;
  while (x >= 1000 && i < units.length - 1) { x /= 1000; i++; }
  return i === 0 ? `${Math.round(x)}` : `${x.toFixed(1)}${units[i]}`;
}

function NodesTable({ nodes }: { nodes: NodeCounters[] }) {
  const sorted = sortNodes(nodes);
  if (!sorted.length) return <p className="muted">No nodes found in the swarm.</p>;
  return (
    <div className="table-wrap">
      <table>
        <thead>
          <tr>
            <th>Peer ID</th><th>Model</th><th>Span</th><th className="num">Throughput (tok/s)</th><th>State</th>
            <th className="num" title="active inference sessions on this node">Load (sessions)</th>
            <th className="num" title="free attention-cache space, in tokens">Free cache</th>
            <th title="compute dtype, weight quantization, KV-cache storage; ring = can end a ring-decoding chain">
              Precision</th><th>Protocol</th>
            <th className="num">RTT (ms)</th><th>Version</th>
            <th className="num" title="credits per 1,000 tokens the node asks (0 = free)">Price</th>
            <th className="num" title="credits this gateway settled for the node's verified work">Credits</th>
          </tr>
        </thead>
        <tbody>
          {sorted.map((n) => (
            <tr key={n.peer_id + n.model_id + n.start} data-testid="node-row" data-peer-id={n.peer_id}>
              <td className="mono" title={n.peer_id}>{shortPeer(n.peer_id)}</td>
              <td>{n.model_id}</td>
              <td className="mono">[{n.start}, {n.end})</td>
              <td className="num">{fmtNum(n.throughput)}</td>
              <td><span className={`state ${n.state}`}>{n.state}</span></td>
              <td className="num">{n.active_sessions}</td>
              <td className="num">{n.free_cache_tokens?.toLocaleString() ?? "–"}</td>
              <td className="mono" data-testid="node-precision">{precision(n)}</td>
              <td>{n.protocol_version}</td>
              <td className="num">{n.rtt_ms == null ? "–" : fmtNum(n.rtt_ms)}</td>
              <td className="muted">{n.software_version}</td>
              <td className="num">{n.price ? fmtNum(n.price) : "free"}</td>
              <td className="num" data-testid="node-credits">{n.credits == null ? "–" : n.credits.toLocaleString()}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function sortNodes(nodes: NodeCounters[]): NodeCounters[] {
  return [...nodes].sort((a, b) => a.model_id.localeCompare(b.model_id) || a.start - b.start || a.end - b.end);
}

/** What each node announces of itself: claims, shown as such, never used by routing. */
function NodeCountersTable({ nodes }: { nodes: NodeCounters[] }) {
  const sorted = sortNodes(nodes);
  if (!sorted.length) return null;
  return (
    <div className="table-wrap">
      <table>
        <thead>
          <tr>
            <th>Peer ID</th><th>Model</th><th>Span</th>
            <th className="num" title="since the node's process started">Uptime</th>
            <th className="num" title="the node process's resident memory">Memory</th>
            <th className="num" title="process CPU over its last announce period; 100% = one core">CPU</th>
            <th className="num" title="positions computed through the node's span since it started">Tokens served</th>
            <th className="num" title="tokens/s through its span, from consecutive records' counters, capped by its announced throughput">tok/s <span className="announced">from counters</span></th>
            <th className="num" title="stream payload bytes sent / received since start">Bytes up / down</th>
          </tr>
        </thead>
        <tbody>
          {sorted.map((n) => (
            <tr key={n.peer_id + n.model_id + n.start} data-testid="node-counters-row" data-peer-id={n.peer_id}>
              <td className="mono" title={n.peer_id}>{shortPeer(n.peer_id)}</td>
              <td>{n.model_id}</td>
              <td className="mono">[{n.start}, {n.end})</td>
              <td className="num" data-testid="node-uptime" data-value={n.uptime_seconds ?? ""}>
                {n.uptime_seconds == null ? "–" : fmtDuration(n.uptime_seconds)}</td>
              <td className="num" data-testid="node-memory" data-value={n.memory_bytes ?? ""}>{fmtBytes(n.memory_bytes)}</td>
              <td className="num" data-testid="node-cpu" data-value={n.cpu_percent ?? ""}>
                {n.cpu_percent == null ? "–" : `${fmtNum(n.cpu_percent, 0)}%`}</td>
              <td className="num" data-testid="node-tokens" data-value={n.tokens_served ?? ""}>{fmtCount(n.tokens_served)}</td>
              <td className="num" data-testid="node-rate">{fmtNum(n.announced_tokens_per_second)}</td>
              <td className="num" data-testid="node-bytes" data-up={n.bytes_sent ?? ""} data-down={n.bytes_received ?? ""}>
                {fmtBytes(n.bytes_sent)} / {fmtBytes(n.bytes_received)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function DemandTable({ demand, nodes }: { demand: ModelDemand[]; nodes: NodeInfo[] }) {
  if (!demand.length) return <p className="muted">No model is served or asked for.</p>;
  return (
    <div className="table-wrap">
      <table>
        <thead>
          <tr>
            <th>Model</th><th className="num" title="nodes online for the model">Nodes</th>
            <th className="num" title="tokens per minute the gateways publish (their claims)">Demand (tok/min)</th>
            <th className="num">Requests/min</th><th className="num">Queued</th>
            <th className="num" title="the weakest block's announced throughput">Supply (tok/min)</th><th>Status</th>
          </tr>
        </thead>
        <tbody>
          {demand.map((d) => {
            const serving = new Set(nodes.filter((n) => n.model_id === d.model_id && n.state === "online").map((n) => n.peer_id)).size;
            return (
              <tr key={d.model_id} data-testid="demand-row" data-model={d.model_id} data-demand={d.demand_tokens_per_minute}>
                <td>{d.model_id}</td>
                <td className="num">{serving}</td>
                <td className="num">{fmtNum(d.demand_tokens_per_minute)}</td>
                <td className="num">{fmtNum(d.demand_requests_per_minute)}</td>
                <td className="num">{d.queue_length}</td>
                <td className="num">{fmtNum(d.supply_tokens_per_minute)}</td>
                <td data-testid="demand-status">
                  {d.warning ? <span className="status-gap">⚠ {d.warning}</span>
                    : <span className="status-ok">{d.covered ? "ok" : "not served"}</span>}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

const MODE_TEXT: Record<ConnMode, string> = {
  connecting: "connecting…",
  live: "live",
  polling: "polling",
  down: "disconnected",
};

function useNow(): number {
  const [now, setNow] = useState(() => Date.now() / 1000);
  useEffect(() => {
    const id = window.setInterval(() => setNow(Date.now() / 1000), 1000);
    return () => window.clearInterval(id);
  }, []);
  return now;
}

export function Dashboard() {
  const { snap: raw, mode, error } = useSwarm();
  const snap = raw as DashboardSnapshot | null;
  const now = useNow();
  const age = snap ? Math.max(0, now - snap.updated_at) : null;
  const hist = snap?.throughput_history ?? [];
  const currentTps = hist.length ? [...hist].sort((a, b) => a.t - b.t)[hist.length - 1].tokens_per_second : null;
  const online = snap?.nodes.filter((n) => n.state === "online").length ?? 0;
  const servable = snap?.models.filter((m) => m.complete).length ?? 0;
  const announced = snap?.announced_throughput_history ?? [];
  const announcedTps = announced.length ? announced[announced.length - 1].tokens_per_second : null;

  return (
    <>
      <header className="topbar">
        <span className="brand">swarmllm<small>dashboard</small></span>
        <span className="conn" data-testid="connection">
          <span className={`dot ${mode === "live" ? "live" : mode === "polling" ? "polling" : mode === "down" ? "down" : ""}`} />
          {MODE_TEXT[mode]}
        </span>
        <span className="muted" data-testid="last-update">
          last update:{" "}
          {snap ? (
            <span className={age !== null && age > STALE_AFTER_S ? "stale" : ""}>
              {fmtClock(snap.updated_at)} ({Math.round(age ?? 0)} s ago)
            </span>
          ) : "never"}
        </span>
        <span className="spacer" />
        <a href="/">← Chat</a>
      </header>
      {error && !snap && <div className="notice">Can't load the swarm status: {error}</div>}
      <main className="dash">
        <section className="cards">
          <div className="card">
            <div className="label">Nodes online</div>
            <div className="value">{snap ? `${online} / ${snap.nodes.length}` : "–"}</div>
          </div>
          <div className="card">
            <div className="label">Active sessions</div>
            <div className="value" data-testid="active-sessions">{snap ? snap.active_sessions : "–"}</div>
          </div>
          <div className="card">
            <div className="label">Swarm throughput</div>
            <div className="value">{fmtNum(currentTps)} <span className="muted" style={{ fontSize: "0.9rem" }}>tok/s</span></div>
          </div>
          <div className="card">
            <div className="label" title="from the nodes' announced tokens_served counters (claims, bounded)">
              Swarm-wide <span className="announced">announced</span></div>
            <div className="value" data-testid="announced-tps">{fmtNum(announcedTps)} <span className="muted" style={{ fontSize: "0.9rem" }}>tok/s</span></div>
          </div>
          <div className="card">
            <div className="label">Models servable</div>
            <div className="value">{snap ? `${servable} / ${snap.models.length}` : "–"}</div>
          </div>
        </section>
        <section className="panel">
          <h2>Layer coverage</h2>
          {snap ? <Coverage models={snap.models} /> : <p className="muted">loading…</p>}
        </section>
        <section className="panel">
          <h2>Coverage over time</h2>
          <CoverageOverTime history={snap?.coverage_history ?? []} />
        </section>
        <section className="panel">
          <h2>Swarm throughput (output tokens/s)</h2>
          <ThroughputChart history={hist} />
          <p className="source">Source: tokens this gateway generated (measured here; other gateways' traffic is not in it).</p>
          <h2 style={{ marginTop: 14 }}>Swarm-wide throughput (tokens/s through each model, announced)</h2>
          <ThroughputChart history={announced} testid="announced-throughput-chart" label="swarm-wide throughput from the nodes' counters" />
          <p className="source">Source: the nodes' announced tokens_served counters, per node between consecutive records
            (a counter going back = a restart; each node capped at 64× its announced throughput), weighted by span /
            blocks so that a token through a chain counts once. Claims, not measurements.</p>
        </section>
        <section className="panel">
          <h2>Chains in use now (this gateway's generations)</h2>
          <Chains chains={snap?.chains ?? []} now={now} />
        </section>
        <section className="panel">
          <h2>Joins and departures</h2>
          <Timeline events={snap?.timeline ?? []} />
        </section>
        <section className="panel">
          <h2>Demand and supply per model</h2>
          {snap ? <DemandTable demand={snap.demand ?? []} nodes={snap.nodes} /> : <p className="muted">loading…</p>}
        </section>
        <section className="panel">
          <h2>Nodes</h2>
          {snap ? <NodesTable nodes={snap.nodes} /> : <p className="muted">loading…</p>}
          <h2 style={{ marginTop: 14 }}>What the nodes announce of themselves <span className="announced">announced</span></h2>
          {snap && <NodeCountersTable nodes={snap.nodes} />}
        </section>
        <section className="panel">
          <h2>Join this swarm</h2>
          <JoinBox join={snap?.join} />
        </section>
        <section className="panel">
          <h2>Use it from your tools</h2>
          <AgentEnv models={snap?.models.filter((m) => m.complete).map((m) => m.model_id) ?? []} />
        </section>
      </main>
    </>
  );
}
