/**
 * The chat page's conversations as React state, saved to localStorage shortly after each change
 * (and when the page is hidden), so a reload restores the list and the conversation that was open.
 *
 * Promises: there is always a current conversation; a failed save sets `storageOk` false and
 * nothing else changes (the conversations live on in memory).
 */
import { useCallback, useEffect, useRef, useState } from "react";
import { type Conversation, type Store, isEmpty, loadStore, newConversation, saveStore } from "./conversations";

const SAVE_DELAY_MS = 300; // a streamed reply changes the store on every chunk: save at most this often

function initialStore(): Store {
  const stored = loadStore();
  const known = stored.conversations.some((c) => c.id === stored.currentId);
  if (known) return stored;
  const newest = [...stored.conversations].sort((a, b) => b.updatedAt - a.updatedAt)[0];
  if (newest) return { ...stored, currentId: newest.id };
  const fresh = newConversation();
  return { currentId: fresh.id, conversations: [fresh] };
}

export function useConversations() {
  const [store, setStore] = useState<Store>(initialStore);
  const [storageOk, setStorageOk] = useState(true);
  const latest = useRef(store);
  latest.current = store;

  useEffect(() => {
    const timer = window.setTimeout(() => setStorageOk(saveStore(latest.current)), SAVE_DELAY_MS);
    return () => window.clearTimeout(timer);
  }, [store]);
  useEffect(() => {
    const flush = () => { saveStore(latest.current); };
    window.addEventListener("pagehide", flush);
    return () => window.removeEventListener("pagehide", flush);
  }, []);

  const current = store.conversations.find((c) => c.id === store.currentId) ?? store.conversations[0];

  /** Applies `change` to one conversation (by id, so a reply lands where it was asked). */
  const update = useCallback((id: string, change: (c: Conversation) => Conversation) => {
    setStore((s) => ({
      ...s,
      conversations: s.conversations.map((c) => (c.id === id ? { ...change(c), updatedAt: Date.now() } : c)),
    }));
  }, []);

  const select = useCallback((id: string) => {
    // An empty conversation left behind is dropped rather than listed as "New chat".
    setStore((s) => ({
      currentId: id,
      conversations: s.conversations.filter((c) => c.id === id || c.id !== s.currentId || !isEmpty(c)),
    }));
  }, []);

  const create = useCallback(() => {
    setStore((s) => {
      const open = s.conversations.find((c) => c.id === s.currentId);
      if (open && isEmpty(open)) return s; // already on a blank one
      const fresh = newConversation();
      return { currentId: fresh.id, conversations: [fresh, ...s.conversations] };
    });
  }, []);

  const remove = useCallback((id: string) => {
    setStore((s) => {
      const rest = s.conversations.filter((c) => c.id !== id);
      if (s.currentId !== id && rest.length) return { ...s, conversations: rest };
      const next = [...rest].sort((a, b) => b.updatedAt - a.updatedAt)[0] ?? newConversation();
      return { currentId: next.id, conversations: rest.length ? rest : [next] };
    });
  }, []);

  return { conversations: store.conversations, current, update, select, create, remove, storageOk };
}
