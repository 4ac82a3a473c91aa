import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

// The Rust server the dev server forwards GraphQL (HTTP and WebSocket) to.
const target = process.env.VERDICT_URL ?? 'http://127.0.0.1:8080';
const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

export default defineConfig({
  server: {
    proxy: {
      '/graphql': { target, ws: true },
      '/ws': { target, ws: true },
    },
  },
  build: {
    // Two pages: the example app (served at /) and GraphiQL (served at /graphiql).
    rollupOptions: {
      input: { main: here('index.html'), graphiql: here('graphiql.html') },
      // GraphiQL's dependencies carry React "use client" directives, meaningless here.
      onwarn(warning, warn) {
        if (warning.code !== 'MODULE_LEVEL_DIRECTIVE') warn(warning);
      },
    },
    // GraphiQL (React + CodeMirror 5) is one large chunk; it is served from the binary.
    chunkSizeWarningLimit: 3000,
  },
});
