/**
 * One streamed chat completion against the gateway, and the messages a conversation sends.
 *
 * Promises: `streamChat` calls `onUpdate` for every chunk that carries text, a finish reason,
 * usage or our `swarmllm` extension, and resolves at `[DONE]`; an HTTP error or an error event in
 * the stream rejects with a sentence (ApiError for HTTP). Does not: touch React state.
 */
import { ApiError, type ChatMessage, type SwarmInfo, errorFromResponse, readSSE } from "../shared/api";
import type { Turn, Usage } from "./conversations";

export interface ReplyUpdate {
  piece: string;
  finishReason: string | null;
  info?: SwarmInfo;
  usage?: Usage;
}

/** The system prompt (when set) and the turns; failed or empty replies are left out. */
export function messagesFor(systemPrompt: string, turns: Turn[]): ChatMessage[] {
  const messages: ChatMessage[] = systemPrompt.trim() ? [{ role: "system", content: systemPrompt }] : [];
  for (const t of turns) if (t.content) messages.push({ role: t.role, content: t.content });
  return messages;
}

export async function streamChat(
  body: Record<string, unknown>, signal: AbortSignal, onUpdate: (update: ReplyUpdate) => void,
): Promise<void> {
  const res = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!res.ok) throw await errorFromResponse(res);
  if (!res.body) throw new Error("the response has no body");
  for await (const data of readSSE(res.body)) {
    if (data === "[DONE]") break;
    let chunk;
    try { chunk = JSON.parse(data); } catch { continue; }
    if (chunk.error) throw new Error(chunk.error.message ?? "the swarm failed during generation");
    const choice = chunk.choices?.[0];
    const update: ReplyUpdate = {
      piece: choice?.delta?.content ?? "",
      finishReason: choice?.finish_reason ?? null,
      info: chunk.swarmllm ?? undefined,
      usage: chunk.usage ?? undefined,
    };
    if (update.piece || update.finishReason || update.info || update.usage) onUpdate(update);
  }
}

/** An error as the sentence shown under the reply. */
export function describeError(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  if (!(e instanceof ApiError)) return msg;
  return `${msg} (HTTP ${e.status}${e.retryAfter != null ? `, retry after ${e.retryAfter} s` : ""})`;
}
