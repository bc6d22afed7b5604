import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The gateway's two pages: "/" -> index.html (chat), "/dashboard" -> dashboard.html; and two served
// elsewhere: volunteer.html (a node's own status page, server/status_http.py) and setup.html (the
// setup wizard, volunteer/wizard.py), which read these built files as plain files.
// (Input paths are relative to this folder, where `npm run build` runs.)
// Built files go straight into the gateway package so a fresh machine needs no npm.
export default defineConfig({
  base: "/",
  plugins: [react()],
  build: {
    outDir: "../src/swarmllm/gateway/static",
    emptyOutDir: true,
    rollupOptions: {
      input: {
        index: "index.html",
        dashboard: "dashboard.html",
        volunteer: "volunteer.html",
        setup: "setup.html",
      },
      // One shared chunk for React + the shared code/CSS, named plainly; the chat page's markdown
      // libraries (marked, DOMPurify, highlight.js) in their own, so the other pages never load them.
      output: {
        manualChunks: (id: string) =>
          !id.includes("node_modules") ? undefined
            : /node_modules\/(marked|dompurify|highlight\.js)\//.test(id) ? "markdown" : "vendor",
      },
    },
  },
  server: {
    // `npm run dev` proxies the API to a gateway running locally on :8000.
    proxy: { "/v1": "http://127.0.0.1:8000", "/api": "http://127.0.0.1:8000" },
  },
});
