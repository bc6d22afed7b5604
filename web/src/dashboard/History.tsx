// Issue 16's panels: the joins/departures timeline, the chains in use, coverage over time, the join box.
import { useState } from "react";
import { shortPeer } from "../shared/api";
import type { Chain, CoverageHistory, JoinCommand, TimelineEvent } from "./types";

function clock(t: number): string {
  return new Date(t * 1000).toLocaleTimeString();
}

const KIND_TEXT: Record<string, string> = { joined: "joined", departed: "departed", moved: "moved to" };

export function Timeline({ events }: { events: TimelineEvent[] }) {
  if (!events.length) return <p className="muted">No joins or departures seen yet.</p>;
  const newest = [...events].sort((a, b) => b.t - a.t).slice(0, 50);
  return (
    <ol className="timeline" data-testid="timeline">
      {newest.map((e, i) => (
        <li key={`${e.t}-${e.peer_id}-${e.kind}-${i}`} data-testid="timeline-event" data-kind={e.kind}
          data-peer-id={e.peer_id} className={`tl-${e.kind}`}>
          <span className="muted mono">{clock(e.t)}</span>
          <span className={`tl-kind tl-${e.kind}`}>{e.initial ? "present" : KIND_TEXT[e.kind] ?? e.kind}</span>
          <span className="mono" title={e.peer_id}>{shortPeer(e.peer_id)}</span>
          <span>{e.model_id}</span>
          <span className="mono">[{e.start}, {e.end})</span>
          {e.reason && <span className="muted">({e.reason})</span>}
          {e.initial && <span className="muted">(already there when this gateway started)</span>}
        </li>
      ))}
    </ol>
  );
}

export function Chains({ chains, now }: { chains: Chain[]; now: number }) {
  if (!chains.length) return <p className="muted" data-testid="chains-empty">No generation in progress through this gateway.</p>;
  return (
    <div className="table-wrap">
      <table data-testid="chains">
        <thead>
          <tr><th>Model</th><th>Chain (server [blocks])</th><th className="num">Tokens</th><th>Decoding</th>
            <th className="num">Running</th></tr>
        </thead>
        <tbody>
          {chains.map((c, i) => (
            <tr key={`${c.since}-${i}`} data-testid="chain-row">
              <td>{c.model_id}</td>
              <td className="mono">
                {c.route.map((h, j) => (
                  <span key={j} title={h.peer_id}>{j > 0 && " → "}{shortPeer(h.peer_id)}[{h.start},{h.end})</span>
                ))}
              </td>
              <td className="num">{c.tokens}</td>
              <td>{c.decoding}</td>
              <td className="num">{Math.max(0, Math.round(now - c.since))} s</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function level(count: number): number {
  return count <= 0 ? 0 : Math.min(count, 3);
}

/** Rows = blocks, columns = refreshes (oldest left): servers per block over time. */
export function CoverageOverTime({ history }: { history: CoverageHistory[] }) {
  if (!history.length) return <p className="muted">No coverage samples yet.</p>;
  return (
    <>
      {history.map((h) => {
        const samples = h.samples;
        const n = samples.length ? samples[samples.length - 1].coverage.length : 0;
        const W = Math.max(1, samples.length), H = Math.max(1, n);
        return (
          <div className="cov-time" key={h.model_id} data-testid="coverage-history" data-model={h.model_id}
            data-samples={samples.length}>
            <div className="model-cov-head"><strong>{h.model_id}</strong>
              <span className="muted">{n} blocks × {samples.length} refreshes</span></div>
            <svg viewBox={`0 0 ${W} ${H}`} preserveAspectRatio="none" role="img"
              aria-label={`servers per block of ${h.model_id} over time`}>
              {samples.map((s, x) => s.coverage.map((c, y) => (
                <rect key={`${x}-${y}`} x={x} y={y} width={1.02} height={1.02} className="hm" data-level={level(c)}>
                  <title>{`${clock(s.t)} block ${y}: ${c} server${c === 1 ? "" : "s"}`}</title>
                </rect>
              )))}
            </svg>
            <div className="chart-axis">
              {samples.length ? <><span>{clock(samples[0].t)}</span><span>block 0 at the top</span>
                <span>{clock(samples[samples.length - 1].t)}</span></> : <span>no data yet</span>}
            </div>
          </div>
        );
      })}
    </>
  );
}

function CopyLine({ text, testid }: { text: string; testid: string }) {
  const [copied, setCopied] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
      setCopied(true);
      window.setTimeout(() => setCopied(false), 1500);
    } catch {
      /* no clipboard (plain http): the text can still be selected */
    }
  };
  return (
    <div className="copy-line">
      <code data-testid={testid} style={{ whiteSpace: "pre-wrap" }}>{text}</code>
      <button type="button" onClick={copy}>{copied ? "copied" : "copy"}</button>
    </div>
  );
}

export function JoinBox({ join }: { join: JoinCommand | null | undefined }) {
  if (!join) return <p className="muted">loading…</p>;
  return (
    <div className="join-box" data-testid="join-box">
      <p>Run this on a machine to give its spare CPU or GPU to this swarm
        (<a href="https://pypi.org/project/swarmllm/">pip install swarmllm</a> first):</p>
      <CopyLine text={join.command} testid="join-command" />
      {join.by_address && <>
        <p className="muted">or, by address:</p>
        <CopyLine text={join.by_address} testid="join-by-address" />
      </>}
      {join.note && <p className="muted">{join.note}</p>}
    </div>
  );
}

/** The environment lines OpenAI-compatible tools read, for this gateway as the browser reaches it
 * (the same lines `swarmllm up` and `swarmllm gateway` print). */
export function AgentEnv({ models }: { models: string[] }) {
  const base = `${window.location.origin}/v1`;
  const lines = [`export OPENAI_BASE_URL=${base}`, `export OPENAI_API_BASE=${base}`,
    "export OPENAI_API_KEY=none", ...(models.length ? [`export OPENAI_MODEL=${models[0]}`] : [])];
  return (
    <div className="join-box" data-testid="agent-env">
      <p>Point OpenAI-compatible tools (SDKs, agents, <code>llm</code>, LangChain…) at this gateway
        {models.length > 1 && <> (models: {models.join(", ")})</>}:</p>
      <CopyLine text={lines.join("\n")} testid="agent-env-lines" />
      <p className="muted">No key is needed unless the gateway runs with <code>--api-keys</code>.</p>
    </div>
  );
}
