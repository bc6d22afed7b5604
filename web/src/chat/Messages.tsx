/**
 * One turn of the conversation on screen. User messages are plain text (newlines kept) and can
 * be edited, which re-sends from there; assistant replies are markdown (Markdown.tsx) with the
 * route and speed line under them, and the newest can be regenerated.
 */
import { type ReactNode, useState } from "react";
import { fmtNum, shortPeer } from "../shared/api";
import type { Turn } from "./conversations";
import { Markdown } from "./Markdown";

export function ReplyMeta({ turn }: { turn: Turn }) {
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
    const v = info.verification;
    if (v && v.mode !== "off") {
      const unchecked = v.unverifiable?.length ? `, ${v.unverifiable.length} span(s) had no second server` : "";
      parts.push(
        <span key="verify" data-testid="reply-verification" title="re-computed on independent servers (docs/verification.md)">
          verified ({v.mode}): {v.steps_checked} checked, {v.mismatches} mismatch{v.mismatches === 1 ? "" : "es"}
          {v.banned?.length ? `, ${v.banned.length} liar(s) banned` : ""}{unchecked}
        </span>,
      );
    }
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

/** onEdit is absent while a reply streams: editing then would race it. */
export function UserMessage({ turn, onEdit }: { turn: Turn; onEdit?: (text: string) => void }) {
  const [draft, setDraft] = useState<string | null>(null); // null: not editing
  if (draft === null) {
    return (
      <div className="msg user" data-testid="user-message">
        <div className="bubble plain">{turn.content}</div>
        {onEdit && (
          <div className="msg-actions">
            <button className="link-button" data-testid="edit-button" onClick={() => setDraft(turn.content)}>Edit</button>
          </div>
        )}
      </div>
    );
  }
  const save = () => {
    if (!draft.trim() || !onEdit) return;
    onEdit(draft.trim());
    setDraft(null);
  };
  return (
    <div className="msg user editing" data-testid="user-message">
      <textarea
        className="edit-box" data-testid="edit-input" value={draft} autoFocus rows={Math.min(10, draft.split("\n").length + 1)}
        onChange={(e) => setDraft(e.target.value)}
        onKeyDown={(e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) { e.preventDefault(); save(); }
          if (e.key === "Escape") setDraft(null);
        }}
      />
      <div className="msg-actions">
        <button className="btn small" onClick={() => setDraft(null)}>Cancel</button>
        <button className="btn small primary" data-testid="edit-save" disabled={!draft.trim() || !onEdit} onClick={save}>
          Send
        </button>
      </div>
    </div>
  );
}

/** onRegenerate is given only for the newest reply, once it has finished. */
export function AssistantMessage({ turn, onRegenerate }: { turn: Turn; onRegenerate?: () => void }) {
  return (
    <div className="msg assistant">
      {(turn.content || turn.streaming || !turn.error) && (
        <div className={"bubble" + (turn.streaming ? " pending" : "")} data-testid="assistant-message">
          <Markdown text={turn.content} />
        </div>
      )}
      {turn.error && <div className="error-box" data-testid="chat-error">{turn.error}</div>}
      <ReplyMeta turn={turn} />
      {onRegenerate && (
        <div className="msg-actions">
          <button className="link-button" data-testid="regenerate-button" onClick={onRegenerate}>↻ Regenerate</button>
        </div>
      )}
    </div>
  );
}
