import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// Two pages: "/" -> index.html (chat), "/dashboard" -> dashboard.html.
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
      },
      // One shared chunk for React + the shared code/CSS, named plainly.
      output: { manualChunks: (id: string) => (id.includes("node_modules") ? "vendor" : undefined) },
    },
  },
  server: {
    // `npm run dev` proxies the API to a gateway running locally on :8000.
    proxy: { "/v1": "http://127.0.0.1:8000", "/api": "http://127.0.0.1:8000" },
  },
});
