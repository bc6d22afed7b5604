import { useEffect, useRef, useState } from "react";
import { type NodeReport, fmtBits, fmtBytes, fmtDuration, fmtNum, shortPeer } from "../shared/api";
import { type ConnMode, useLive } from "../shared/useLive";

// The volunteer's own page, served by their node on 127.0.0.1 (server/status_http.py):
// what this node has served, live from /api/node/stream (one event a second).

const MODE_TEXT: Record<ConnMode, string> = {
  connecting: "connecting…", live: "live", polling: "polling (stream unavailable)", down: "node not answering",
};

const STATE_TEXT: Record<string, string> = {
  starting: "Starting: loading its blocks and joining the swarm",
  serving: "Serving the swarm",
  paused: "Paused",
  draining: "Leaving: finishing its sessions",
};

/** Tokens served per minute over the last minute, from the reports seen (the node counts totals only). */
function useRate(report: NodeReport | null): number | null {
  const seen = useRef<{ t: number; tokens: number }[]>([]);
  const [rate, setRate] = useState<number | null>(null);
  useEffect(() => {
    if (!report) return;
    const now = report.uptime_seconds;
    const points = seen.current.filter((p) => p.t > now - 60 && p.t <= now);
    points.push({ t: now, tokens: report.tokens_served });
    seen.current = points;
    const first = points[0];
    setRate(now - first.t >= 5 ? ((report.tokens_served - first.tokens) / (now - first.t)) * 60 : null);
  }, [report]);
  return rate;
}

function Card({ label, value, sub, testid }: { label: string; value: string; sub?: string; testid: string }) {
  return (
    <div className="card">
      <div className="label">{label}</div>
      <div className="value" data-testid={testid}>{value}</div>
      {sub && <div className="muted small">{sub}</div>}
    </div>
  );
}

function Credits({ credits }: { credits: NodeReport["credits"] }) {
  if (credits === null) return <p className="muted">Credits are being read…</p>;
  const rows = Object.entries(credits.by_gateway).sort((a, b) => b[1] - a[1]);
  if (!rows.length) {
    return <p className="muted" data-testid="credits-none">No gateway has sent this node a signed credit statement yet.</p>;
  }
  return (
    <table>
      <thead><tr><th>Gateway</th><th className="num">Credits</th></tr></thead>
      <tbody>
        {rows.map(([gateway, n]) => (
          <tr key={gateway} data-testid="credits-row"><td className="mono" title={gateway}>{shortPeer(gateway)}</td>
            <td className="num">{n.toLocaleString()}</td></tr>
        ))}
      </tbody>
    </table>
  );
}

export function Volunteer() {
  const { snap: node, mode, error } = useLive<NodeReport>("/api/node", "/api/node/stream");
  const rate = useRate(node);
  const state = node?.state ?? "starting";
  return (
    <>
      <header className="topbar">
        <span className="brand">swarmllm<small>your node</small></span>
        <span className="conn" data-testid="connection">
          <span className={`dot ${mode === "live" ? "live" : mode === "polling" ? "polling" : mode === "down" ? "down" : ""}`} />
          {MODE_TEXT[mode]}
        </span>
        <span className="spacer" />
        {node?.peer_id && <span className="muted mono" title={node.peer_id}>{shortPeer(node.peer_id)}</span>}
      </header>
      {error && !node && <div className="notice">Can't read this node's status: {error}</div>}
      <main className="dash">
        <section className={`panel state-banner ${state}`} data-testid="node-state" data-state={state}>
          <strong>{STATE_TEXT[state] ?? state}</strong>
          {node?.paused_reason && <span data-testid="paused-reason"> — {node.paused_reason}</span>}
          {node?.model && (
            <span className="muted" data-testid="node-span">
              {" "}· {node.model} blocks [{node.start}, {node.end}) · {fmtNum(node.throughput)} tok/s measured here
            </span>
          )}
        </section>
        <section className="cards">
          <Card label="Tokens served" testid="tokens-served" value={node ? node.tokens_served.toLocaleString() : "–"}
                sub={rate === null ? "positions computed for others" : `${fmtNum(rate, 0)} per minute lately`} />
          <Card label="Sessions served" testid="sessions-served" value={node ? node.sessions_served.toLocaleString() : "–"}
                sub={node ? `${node.sessions_active} active now · ${node.steps_served.toLocaleString()} steps` : undefined} />
          <Card label="Uptime" testid="uptime" value={node ? fmtDuration(node.uptime_seconds) : "–"} />
          <Card label="Uploaded" testid="bytes-up" value={node ? fmtBytes(node.bytes_up) : "–"}
                sub={node ? `cap: ${fmtBits(node.max_upload_bps)}` : undefined} />
          <Card label="Downloaded" testid="bytes-down" value={node ? fmtBytes(node.bytes_down) : "–"}
                sub={node ? `cap: ${fmtBits(node.max_download_bps)}` : undefined} />
          <Card label="Credits earned" testid="credits-total"
                value={node?.credits ? node.credits.total.toLocaleString() : "–"} sub="signed by the gateways" />
        </section>
        <section className="panel">
          <h2>Credits by gateway</h2>
          {node ? <Credits credits={node.credits} /> : <p className="muted">loading…</p>}
        </section>
        <section className="panel" data-testid="node-version">
          <h2>Software</h2>
          {node ? (
            <p>swarmllm {node.version} · protocol v{node.protocol_version} ·{" "}
              {node.update === null ? "auto-update off"
                : node.update.available ? `update ${node.update.available} available (${node.update.state})`
                : `up to date (${node.update.state})`}
            </p>
          ) : <p className="muted">loading…</p>}
        </section>
      </main>
    </>
  );
}
