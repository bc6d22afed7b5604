/**
 * The chat page: conversations kept in this browser (sidebar), a system prompt per conversation,
 * sampling controls, and replies streamed from the gateway with their route, speed and the
 * context they use. The pieces live beside it: conversations.ts / useConversations.ts (storage),
 * stream.ts (the request), Markdown.tsx, Messages.tsx, SamplingPanel.tsx, context.ts.
 */
import { useCallback, useEffect, useRef, useState } from "react";
import { errorFromResponse } from "../shared/api";
import { type ModelCard, contextLimit, contextUse } from "./context";
import type { Turn } from "./conversations";
import { AssistantMessage, UserMessage } from "./Messages";
import { SamplingPanel } from "./SamplingPanel";
import { type SamplingValues, samplingFields, samplingProblem } from "./sampling";
import { Sidebar } from "./Sidebar";
import { describeError, messagesFor, streamChat } from "./stream";
import { useConversations } from "./useConversations";

const MODELS_RETRY_MS = 10_000;

function useModels() {
  const [cards, setCards] = useState<ModelCard[] | null>(null); // null = still loading
  const [loadError, setLoadError] = useState<string | null>(null);
  useEffect(() => {
    let cancelled = false;
    let timer: number | undefined;
    const load = async () => {
      try {
        const res = await fetch("/v1/models");
        if (!res.ok) throw await errorFromResponse(res);
        const body = await res.json();
        const data: ModelCard[] = body?.data ?? [];
        if (cancelled) return;
        setCards(data);
        setLoadError(null);
        if (data.length === 0) timer = window.setTimeout(load, MODELS_RETRY_MS);
      } catch (e) {
        if (cancelled) return;
        setCards([]);
        setLoadError(e instanceof Error ? e.message : String(e));
        timer = window.setTimeout(load, MODELS_RETRY_MS);
      }
    };
    load();
    return () => { cancelled = true; window.clearTimeout(timer); };
  }, []);
  return { cards, loadError };
}

/** The turns with the last one changed (the reply being streamed into). */
function patchLast(turns: Turn[], patch: (t: Turn) => Turn): Turn[] {
  return turns.length ? [...turns.slice(0, -1), patch(turns[turns.length - 1])] : turns;
}

export function Chat() {
  const { cards, loadError } = useModels();
  const conversations = useConversations();
  const conversation = conversations.current;
  const [model, setModel] = useState("");
  const [input, setInput] = useState("");
  const [sampling, setSampling] = useState<SamplingValues>({});
  const [samplingOpen, setSamplingOpen] = useState(false);
  const [radius, setRadius] = useState(""); // "" = the gateway's default
  const [verify, setVerify] = useState(""); // "" = the gateway's default (sample)
  const [streaming, setStreaming] = useState(false);
  const abortRef = useRef<AbortController | null>(null);
  const listRef = useRef<HTMLDivElement>(null);
  const inputRef = useRef<HTMLTextAreaElement>(null);
  const models = cards?.map((c) => c.id) ?? null;

  // Keep the picked model valid as the list of servable models changes.
  useEffect(() => {
    if (models && models.length && !models.includes(model)) setModel(models[0]);
  }, [models, model]);

  // Follow the conversation as it grows (unless the user scrolled up to read).
  const stickToBottom = useRef(true);
  useEffect(() => {
    const el = listRef.current;
    if (el && stickToBottom.current) el.scrollTop = el.scrollHeight;
  }, [conversation]);

  // Grow the input with its text, up to the CSS max-height.
  useEffect(() => {
    const el = inputRef.current;
    if (!el) return;
    el.style.height = "auto";
    el.style.height = `${el.scrollHeight + 2}px`;
  }, [input]);

  const noModel = models !== null && models.length === 0;
  const problem = samplingProblem(sampling);
  const ready = !streaming && !!model && !noModel && !problem;
  const canSend = ready && input.trim().length > 0;

  /** Streams a reply to `history` (which ends with a user turn) into the conversation. */
  async function generate(history: Turn[]) {
    const id = conversation.id;
    const body = {
      model, messages: messagesFor(conversation.systemPrompt, history), ...samplingFields(sampling),
      ...(radius ? { radius } : {}), ...(verify ? { verify } : {}),
    };
    const updateLast = (patch: (t: Turn) => Turn) =>
      conversations.update(id, (c) => ({ ...c, turns: patchLast(c.turns, patch) }));
    conversations.update(id, (c) => ({ ...c, turns: [...history, { role: "assistant", content: "", streaming: true }] }));
    setStreaming(true);
    stickToBottom.current = true;
    const ctrl = new AbortController();
    abortRef.current = ctrl;
    try {
      await streamChat(body, ctrl.signal, (u) => updateLast((t) => ({
        ...t,
        content: t.content + u.piece,
        finishReason: u.finishReason ?? t.finishReason,
        info: u.info ?? t.info,
        usage: u.usage ?? t.usage,
      })));
      updateLast((t) => ({ ...t, streaming: false }));
    } catch (e) {
      if (ctrl.signal.aborted) updateLast((t) => ({ ...t, streaming: false, stopped: true }));
      else updateLast((t) => ({ ...t, streaming: false, error: describeError(e) }));
    } finally {
      abortRef.current = null;
      setStreaming(false);
      inputRef.current?.focus();
    }
  }

  function send() {
    if (!canSend) return;
    generate([...conversation.turns, { role: "user", content: input.trim() }]);
    setInput("");
  }

  /** Replaces the user message at `index` and everything after it, then asks again. */
  function editAt(index: number, text: string) {
    if (!ready) return;
    generate([...conversation.turns.slice(0, index), { role: "user", content: text }]);
  }

  function regenerate() {
    if (!ready) return;
    generate(conversation.turns.slice(0, -1));
  }

  const stop = useCallback(() => abortRef.current?.abort(), []);
  // Leaving a conversation stops its reply (what arrived so far is kept, marked stopped).
  const leaveTo = (go: () => void) => { stop(); stickToBottom.current = true; go(); };

  const turns = conversation.turns;
  const lastIndex = turns.length - 1;
  const use = contextUse(conversation);
  const limit = contextLimit(model, cards?.find((c) => c.id === model));

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
        <label className="field" title="How the servers' work is checked: sample = a share of steps re-computed on independent servers (the default), strict = every step before its token is shown, off = trust them">
          Verify
          <select data-testid="verify-select" value={verify} disabled={streaming} onChange={(e) => setVerify(e.target.value)}>
            <option value="">gateway default</option>
            <option value="sample">sample</option>
            <option value="strict">strict</option>
            <option value="off">off</option>
          </select>
        </label>
        <span className="spacer" />
        <span className="nav"><a href="/dashboard">Dashboard →</a></span>
      </header>
      {noModel && (
        <div className="notice" data-testid="no-model-notice">
          No model can be fully served by the swarm right now (some transformer blocks have no server).
          Sending is disabled until one can; see the <a href="/dashboard">dashboard</a> for coverage.
          {loadError && <> ({loadError})</>}
        </div>
      )}
      <div className="chat-body">
        <Sidebar
          conversations={conversations.conversations}
          currentId={conversation.id}
          storageOk={conversations.storageOk}
          onSelect={(id) => leaveTo(() => conversations.select(id))}
          onCreate={() => leaveTo(conversations.create)}
          onDelete={(id) => (id === conversation.id ? leaveTo(() => conversations.remove(id)) : conversations.remove(id))}
        />
        <main className="chat">
          <div className="settings">
            <textarea
              className="system-prompt" data-testid="system-prompt" rows={1}
              placeholder="System prompt (optional): how the assistant should behave in this conversation"
              value={conversation.systemPrompt}
              disabled={streaming}
              onChange={(e) => {
                const systemPrompt = e.target.value;
                conversations.update(conversation.id, (c) => ({ ...c, systemPrompt }));
              }}
            />
            <SamplingPanel
              values={sampling}
              onChange={(name, text) => setSampling((s) => ({ ...s, [name]: text }))}
              onReset={() => setSampling({})}
              open={samplingOpen}
              onToggle={() => setSamplingOpen((o) => !o)}
              disabled={streaming}
            />
          </div>
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
                <UserMessage key={i} turn={t} onEdit={ready ? (text) => editAt(i, text) : undefined} />
              ) : (
                <AssistantMessage key={i} turn={t} onRegenerate={i === lastIndex && ready ? regenerate : undefined} />
              ),
            )}
          </div>
          <form className="composer" onSubmit={(e) => { e.preventDefault(); send(); }}>
            <div className="composer-row">
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
            </div>
            <div className="composer-foot small">
              {problem ? <span className="stale" data-testid="sampling-problem">{problem}</span> : <span />}
              <span
                className={"context-meter" + (use.tokens >= limit ? " full" : use.tokens >= 0.8 * limit ? " near" : "")}
                data-testid="context-meter" data-exact={use.exact ? "true" : "false"}
                title={use.exact ? "Tokens of the last reply (prompt + completion) of the model's context"
                  : "Estimated from the conversation's length (about 4 characters per token)"}
              >
                {use.exact ? "" : "~"}{use.tokens} / {limit} tokens
              </span>
            </div>
          </form>
        </main>
      </div>
    </div>
  );
}
