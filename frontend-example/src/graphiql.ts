// Self-hosted GraphiQL: everything is bundled by Vite, nothing comes from a CDN.
// Queries and mutations go over HTTP POST /graphql; subscriptions over graphql-ws at /ws.
import { createElement } from 'react';
import { createRoot } from 'react-dom/client';
import { GraphiQL } from 'graphiql';
import { createGraphiQLFetcher } from '@graphiql/toolkit';
import { createClient } from 'graphql-ws';
import 'graphiql/style.css';

// The example app stores the API key under this name; GraphiQL reuses it.
const apiKey = localStorage.getItem('verdict.apiKey') ?? '';
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;

const wsClient = createClient({
  url: wsUrl,
  connectionParams: () => (apiKey ? { authorization: `Bearer ${apiKey}` } : {}),
  retryAttempts: 5,
});

const fetcher = createGraphiQLFetcher({
  url: '/graphql',
  headers: apiKey ? { authorization: `Bearer ${apiKey}` } : undefined,
  wsClient,
});

const defaultQuery = `# Submit a program, then paste its id into the subscription below.
mutation Submit {
  submit(input: { language: "python3", source: "print('hello')" }) { id status }
}

subscription Events($id: ID!) {
  submissionEvents(id: $id) {
    __typename
    seq
    at
    ... on QueuedEvent { position }
    ... on RunningEvent { test tests }
    ... on OutputEvent { test stream chunk }
    ... on TestFinishedEvent { result { index verdict timeMs memoryKb } }
    ... on FinishedEvent { submission { status verdict compileOutput message } }
  }
}

query Languages {
  languages { id name version compiled }
}
`;

const root = document.getElementById('graphiql');
if (root) {
  root.textContent = '';
  createRoot(root).render(createElement(GraphiQL, { fetcher, defaultQuery }));
}
