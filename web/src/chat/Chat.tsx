import { type ReactNode, useCallback, useEffect, useRef, useState } from "react";
import {
  ApiError, type ChatMessage, type SwarmInfo, errorFromResponse, fmtNum, readSSE, shortPeer,
} from "../shared/api";

interface Turn {
  role: "user" | "assistant";
  content: string;
  streaming?: boolean;
  stopped?: boolean;
  finishReason?: string | null;
  info?: SwarmInfo;
  error?: string;
}

const MODELS_RETRY_MS = 10_000;

function useModels() {
  const [models, setModels] = useState<string[] | null>(null); // null = still loading
  const [loadError, setLoadError] = useState<string | null>(null);
  useEffect(() => {
    let cancelled = false;
    let timer: number | undefined;
    const load = async () => {
      try {
        const res = await fetch("/v1/models");
        if (!res.ok) throw await errorFromResponse(res);
        const body = await res.json();
        const ids: string[] = (body?.data ?? []).map((m: { id: string }) => m.id);
        if (cancelled) return;
        setModels(ids);
        setLoadError(null);
        if (ids.length === 0) timer = window.setTimeout(load, MODELS_RETRY_MS);
      } catch (e) {
        if (cancelled) return;
        setModels([]);
        setLoadError(e instanceof Error ? e.message : String(e));
        timer = window.setTimeout(load, MODELS_RETRY_MS);
      }
    };
    load();
    return () => { cancelled = true; window.clearTimeout(timer); };
  }, []);
  return { models, loadError };
}

function ReplyMeta({ turn }: { turn: Turn }) {
  if (turn.streaming) return null;
  const info = turn.info;
  const parts: ReactNode[] = [];
  if (info?.route?.length) {
    parts.push(
      <span key="route">
        served by{" "}
        {info.route.map((hop, i) => (
          <span className="hop" key={i}>
            {i > 0 && " → "}
            <span className="mono" title={hop.peer_id}>{shortPeer(hop.peer_id)}</span> [{hop.start},{hop.end})
          </span>
        ))}
      </span>,
    );
  }
  if (info) {
    parts.push(<span key="tps">{fmtNum(info.tokens_per_second)} tok/s</span>);
    parts.push(<span key="ttft">TTFT {fmtNum(info.time_to_first_token, 2)} s</span>);
    if (info.completion_tokens != null) parts.push(<span key="n">{info.completion_tokens} tokens</span>);
  }
  if (turn.finishReason === "length") parts.push(<span key="len">stopped at max tokens</span>);
  if (turn.stopped) parts.push(<span key="stop">stopped by you</span>);
  if (!parts.length) return null;
  return (
    <div className="reply-meta" data-testid="reply-meta">
      {parts.map((p, i) => <span key={i}>{i > 0 && " · "}{p}</span>)}
    </div>
  );
}

export function Chat() {
  const { models, loadError } = useModels();
  const [model, setModel] = useState("");
  const [turns, setTurns] = useState<Turn[]>([]);
  const [input, setInput] = useState("");
  const [maxTokens, setMaxTokens] = useState(256);
  const [temperature, setTemperature] = useState(0.7);
  const [radius, setRadius] = useState(""); // "" = the gateway's default
  const [streaming, setStreaming] = useState(false);
  const abortRef = useRef<AbortController | null>(null);
  const listRef = useRef<HTMLDivElement>(null);
  const inputRef = useRef<HTMLTextAreaElement>(null);

  // Keep the picked model valid as the list of servable models changes.
  useEffect(() => {
    if (models && models.length && !models.includes(model)) setModel(models[0]);
  }, [models, model]);

  // Follow the conversation as it grows (unless the user scrolled up to read).
  const stickToBottom = useRef(true);
  useEffect(() => {
    const el = listRef.current;
    if (el && stickToBottom.current) el.scrollTop = el.scrollHeight;
  }, [turns]);

  const updateLast = useCallback((patch: (t: Turn) => Turn) => {
    setTurns((ts) => (ts.length ? [...ts.slice(0, -1), patch(ts[ts.length - 1])] : ts));
  }, []);

  // Grow the input with its text, up to the CSS max-height.
  useEffect(() => {
    const el = inputRef.current;
    if (!el) return;
    el.style.height = "auto";
    el.style.height = `${el.scrollHeight + 2}px`;
  }, [input]);

  const noModel = models !== null && models.length === 0;
  const canSend = !streaming && !!model && !noModel && input.trim().length > 0;

  async function send() {
    if (!canSend) return;
    const text = input.trim();
    // The whole history goes with every turn; failed or empty replies are left out.
    const history: ChatMessage[] = [
      ...turns.filter((t) => t.content).map((t) => ({ role: t.role, content: t.content })),
      { role: "user", content: text },
    ];
    setTurns((ts) => [...ts, { role: "user", content: text }, { role: "assistant", content: "", streaming: true }]);
    setInput("");
    setStreaming(true);
    stickToBottom.current = true;
    const ctrl = new AbortController();
    abortRef.current = ctrl;
    try {
      const res = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify({
          model, messages: history, stream: true, max_tokens: maxTokens, temperature, ...(radius ? { radius } : {}),
        }),
        signal: ctrl.signal,
      });
      if (!res.ok) throw await errorFromResponse(res);
      if (!res.body) throw new Error("the response has no body");
      for await (const data of readSSE(res.body)) {
        if (data === "[DONE]") break;
        let chunk;
        try { chunk = JSON.parse(data); } catch { continue; }
        if (chunk.error) throw new Error(chunk.error.message ?? "the swarm failed during generation");
        const choice = chunk.choices?.[0];
        const piece: string = choice?.delta?.content ?? "";
        const finish = choice?.finish_reason ?? null;
        const info: SwarmInfo | undefined = chunk.swarmllm;
        if (piece || finish || info) {
          updateLast((t) => ({
            ...t,
            content: t.content + piece,
            finishReason: finish ?? t.finishReason,
            info: info ?? t.info,
          }));
        }
      }
      updateLast((t) => ({ ...t, streaming: false }));
    } catch (e) {
      if (ctrl.signal.aborted) {
        updateLast((t) => ({ ...t, streaming: false, stopped: true }));
      } else {
        let msg = e instanceof Error ? e.message : String(e);
        if (e instanceof ApiError) {
          msg = `${msg} (HTTP ${e.status}${e.retryAfter != null ? `, retry after ${e.retryAfter} s` : ""})`;
        }
        updateLast((t) => ({ ...t, streaming: false, error: msg }));
      }
    } finally {
      abortRef.current = null;
      setStreaming(false);
      inputRef.current?.focus();
    }
  }

  function stop() {
    abortRef.current?.abort();
  }

  function newChat() {
    stop();
    setTurns([]);
  }

  return (
    <div className="chat-app">
      <header className="topbar">
        <span className="brand">swarmllm<small>chat</small></span>
        <label className="field">
          Model
          <select
            data-testid="model-select"
            value={model}
            disabled={!models || models.length === 0 || streaming}
            onChange={(e) => setModel(e.target.value)}
          >
            {models === null && <option value="">loading…</option>}
            {noModel && <option value="">no model available</option>}
            {models?.map((m) => <option key={m} value={m}>{m}</option>)}
          </select>
        </label>
        <label className="field">
          Max tokens
          <input
            type="number" min={1} max={4096} value={maxTokens} data-testid="max-tokens"
            onChange={(e) => setMaxTokens(Math.max(1, Number(e.target.value) || 1))}
          />
        </label>
        <label className="field">
          Temperature
          <input
            type="number" min={0} max={2} step={0.1} value={temperature} data-testid="temperature"
            onChange={(e) => setTemperature(Math.min(2, Math.max(0, Number(e.target.value) || 0)))}
          />
        </label>
        <label className="field" title="Which machines may compute the reply: local = yours, trusted = also owners you paired with, public = anyone">
          Radius
          <select data-testid="radius-select" value={radius} disabled={streaming} onChange={(e) => setRadius(e.target.value)}>
            <option value="">gateway default</option>
            <option value="local">local (my machines)</option>
            <option value="trusted">trusted (paired owners)</option>
            <option value="trusted+public">trusted, else public</option>
            <option value="public">public</option>
          </select>
        </label>
        <span className="spacer" />
        <span className="nav">
          <button className="btn" onClick={newChat} disabled={!turns.length}>New chat</button>
          <a href="/dashboard">Dashboard →</a>
        </span>
      </header>
      {noModel && (
        <div className="notice" data-testid="no-model-notice">
          No model can be fully served by the swarm right now (some transformer blocks have no server).
          Sending is disabled until one can; see the <a href="/dashboard">dashboard</a> for coverage.
          {loadError && <> ({loadError})</>}
        </div>
      )}
      <main className="chat">
        <div
          className="messages"
          ref={listRef}
          onScroll={(e) => {
            const el = e.currentTarget;
            stickToBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
          }}
        >
          {turns.length === 0 && (
            <div className="empty">
              <p>Ask anything. Each reply is generated by a chain of swarm nodes,<br />each running a span of the model's layers.</p>
            </div>
          )}
          {turns.map((t, i) =>
            t.role === "user" ? (
              <div className="msg user" key={i} data-testid="user-message">
                <div className="bubble">{t.content}</div>
              </div>
            ) : (
              <div className="msg assistant" key={i}>
                {(t.content || t.streaming || !t.error) && (
                  <div className={"bubble" + (t.streaming ? " pending" : "")} data-testid="assistant-message">
                    {t.content}
                  </div>
                )}
                {t.error && <div className="error-box" data-testid="chat-error">{t.error}</div>}
                <ReplyMeta turn={t} />
              </div>
            ),
          )}
        </div>
        <form
          className="composer"
          onSubmit={(e) => { e.preventDefault(); send(); }}
        >
          <textarea
            ref={inputRef}
            data-testid="chat-input"
            rows={1}
            placeholder={noModel ? "No model available" : "Message (Enter to send, Shift+Enter for a new line)"}
            value={input}
            disabled={noModel}
            onChange={(e) => setInput(e.target.value)}
            onKeyDown={(e) => {
              if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
                e.preventDefault();
                send();
              }
            }}
          />
          {streaming ? (
            <button type="button" className="btn danger" data-testid="stop-button" onClick={stop}>Stop</button>
          ) : (
            <button type="submit" className="btn primary" data-testid="send-button" disabled={!canSend}>Send</button>
          )}
        </form>
      </main>
    </div>
  );
}
