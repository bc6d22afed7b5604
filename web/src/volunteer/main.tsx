import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import "../shared/styles.css";
import { Volunteer } from "./Volunteer";

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <Volunteer />
  </StrictMode>,
);
