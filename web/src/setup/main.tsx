import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import "../shared/styles.css";
import { Setup } from "./Setup";

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <Setup />
  </StrictMode>,
);
