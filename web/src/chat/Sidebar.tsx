/** The list of conversations kept in this browser: switch, start a new one, delete. */
import { type Conversation, isEmpty, titleOf } from "./conversations";

interface Props {
  conversations: Conversation[];
  currentId: string;
  onSelect: (id: string) => void;
  onCreate: () => void;
  onDelete: (id: string) => void;
  storageOk: boolean;
}

export function Sidebar({ conversations, currentId, onSelect, onCreate, onDelete, storageOk }: Props) {
  // Newest activity first; a blank conversation is listed only while it is the open one.
  const listed = conversations
    .filter((c) => c.id === currentId || !isEmpty(c))
    .sort((a, b) => b.updatedAt - a.updatedAt);
  return (
    <aside className="sidebar">
      <button className="btn primary new-chat" data-testid="new-chat" onClick={onCreate}>+ New chat</button>
      <ul className="conversations" data-testid="conversation-list">
        {listed.map((c) => (
          <li
            key={c.id}
            className={"conversation" + (c.id === currentId ? " current" : "")}
            data-testid="conversation-item"
            aria-current={c.id === currentId ? "true" : undefined}
          >
            <button className="conversation-title" title={titleOf(c)} onClick={() => onSelect(c.id)}>
              {titleOf(c)}
            </button>
            <button
              className="conversation-delete" data-testid="delete-conversation" title="Delete this conversation"
              aria-label={`Delete “${titleOf(c)}”`}
              onClick={() => { if (isEmpty(c) || window.confirm(`Delete “${titleOf(c)}”?`)) onDelete(c.id); }}
            >
              ×
            </button>
          </li>
        ))}
      </ul>
      {!storageOk && (
        <p className="small stale" data-testid="storage-warning">
          This browser will not store conversations (storage full or disabled): they last until you close the tab.
        </p>
      )}
    </aside>
  );
}
