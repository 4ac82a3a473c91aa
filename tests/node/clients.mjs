// The GraphQL clients that web apps and scripts use, behind one small interface, so that
// every scenario runs with each of them:
//
//   const c = await CLIENTS[i].make(httpUrl, wsUrl, { on })
//   await c.submit(input)               → id (GraphQL over HTTP, through the client)
//   c.subscribe(variables, sink)        → unsubscribe; sink: {next(event), error(e), complete()}
//   await c.dispose()
//
// `variables` is `{ id, afterSeq }`; a scenario keeps `variables.afterSeq` at the last seq
// it saw. graphql-ws re-sends that very object when it resubscribes after a reconnect, so
// the server replays only what was missed; clients that copy the variables (Apollo, urql)
// resubscribe from where they started and the app drops what it has seen (by seq).

import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

import WebSocket from 'ws';
import { createClient } from 'graphql-ws';

import * as apollo4 from '@apollo/client';
import { GraphQLWsLink as GraphQLWsLink4 } from '@apollo/client/link/subscriptions';
import { getMainDefinition as mainDefinition4 } from '@apollo/client/utilities';
import * as apollo3 from 'apollo-client-3/core/index.js';
import { GraphQLWsLink as GraphQLWsLink3 } from 'apollo-client-3/link/subscriptions/index.js';
import { WebSocketLink } from 'apollo-client-3/link/ws/index.js';
import { getMainDefinition as mainDefinition3 } from 'apollo-client-3/utilities/index.js';
import { SubscriptionClient } from 'subscriptions-transport-ws';
import { Client as UrqlClient, fetchExchange, subscriptionExchange } from '@urql/core';
import { pipe, subscribe as wonkaSubscribe, onEnd } from 'wonka';
import { GraphQLClient, gql as requestGql } from 'graphql-request';

/** The installed version of an npm package (some do not export their package.json). */
const version = (pkg) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${pkg}/package.json`, import.meta.url))).version;

export const SUBMIT = 'mutation Submit($i: SubmitInput!){ submit(input:$i){ id } }';
export const EVENTS = `subscription Events($id: ID!, $afterSeq: Int){
  submissionEvents(id:$id, afterSeq:$afterSeq){
    __typename
    seq
    ... on FinishedEvent { submission { id verdict } }
  }
}`;

/**
 * The reference graphql-ws client as the apps configure it: lazy (the default), retrying
 * every close but a refused key, quickly (a test must not wait out a 30 s back-off).
 */
export function wsClient(url, on = {}) {
  return createClient({
    url,
    webSocketImpl: WebSocket,
    lazy: true,
    retryAttempts: 60,
    retryWait: () => sleep(150),
    shouldRetry: (e) => e?.code !== 4403,
    on,
  });
}

/** A sink for graphql-ws-shaped results ({data, errors}). */
function resultSink(sink) {
  return {
    next: (r) => {
      if (r.errors?.length) sink.error(r.errors);
      else sink.next(r.data.submissionEvents);
    },
    error: (e) => sink.error(e),
    complete: () => sink.complete(),
  };
}

function apolloClient(lib, WsLink, mainDefinition, httpUrl, ws) {
  const link = lib.split(
    ({ query }) => {
      const d = mainDefinition(query);
      return d.kind === 'OperationDefinition' && d.operation === 'subscription';
    },
    WsLink ? new WsLink(ws) : ws,
    new lib.HttpLink({ uri: httpUrl, fetch }),
  );
  return new lib.ApolloClient({ link, cache: new lib.InMemoryCache() });
}

function apolloAdapter(lib, client, dispose) {
  const SUBMIT_DOC = lib.gql(SUBMIT);
  const EVENTS_DOC = lib.gql(EVENTS);
  return {
    async submit(input) {
      const r = await client.mutate({ mutation: SUBMIT_DOC, variables: { i: input }, fetchPolicy: 'no-cache' });
      return r.data.submit.id;
    },
    subscribe(variables, sink) {
      const s = client
        .subscribe({ query: EVENTS_DOC, variables, fetchPolicy: 'no-cache' })
        .subscribe(resultSink(sink));
      return () => s.unsubscribe();
    },
    dispose,
  };
}

export const CLIENTS = [
  {
    name: `graphql-ws ${version('graphql-ws')} (reference client) + fetch`,
    resendsVariables: true,
    async make(httpUrl, wsUrl, { on } = {}) {
      const ws = wsClient(wsUrl, on);
      return {
        async submit(input) {
          const res = await fetch(httpUrl, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ query: SUBMIT, variables: { i: input } }),
          });
          const body = await res.json();
          if (body.errors) throw new Error(JSON.stringify(body.errors));
          return body.data.submit.id;
        },
        subscribe: (variables, sink) => ws.subscribe({ query: EVENTS, variables }, resultSink(sink)),
        dispose: () => ws.dispose(),
      };
    },
  },
  {
    name: `Apollo Client ${version('@apollo/client')} (HttpLink + GraphQLWsLink)`,
    async make(httpUrl, wsUrl, { on } = {}) {
      const ws = wsClient(wsUrl, on);
      const client = apolloClient(apollo4, GraphQLWsLink4, mainDefinition4, httpUrl, ws);
      return apolloAdapter(apollo4, client, async () => { client.stop(); await ws.dispose(); });
    },
  },
  {
    name: `Apollo Client ${version('apollo-client-3')} (HttpLink + GraphQLWsLink)`,
    async make(httpUrl, wsUrl, { on } = {}) {
      const ws = wsClient(wsUrl, on);
      const client = apolloClient(apollo3, GraphQLWsLink3, mainDefinition3, httpUrl, ws);
      return apolloAdapter(apollo3, client, async () => { client.stop(); await ws.dispose(); });
    },
  },
  {
    name: `Apollo Client ${version('apollo-client-3')} (WebSocketLink, subscriptions-transport-ws ${version('subscriptions-transport-ws')})`,
    async make(httpUrl, wsUrl, { on } = {}) {
      const sub = new SubscriptionClient(wsUrl, {
        reconnect: true,
        lazy: true,
        minTimeout: 150,
        timeout: 30_000,
      }, WebSocket);
      if (on?.connected) sub.onConnected(() => on.connected());
      if (on?.connected) sub.onReconnected(() => on.connected());
      // subscriptions-transport-ws backs off from 1 s to 30 s by default; a test cannot wait.
      sub.backoff.ms = 150;
      sub.backoff.max = 500;
      const client = apolloClient(apollo3, null, mainDefinition3, httpUrl, new WebSocketLink(sub));
      return apolloAdapter(apollo3, client, async () => { client.stop(); sub.close(true); });
    },
  },
  {
    name: `urql ${version('@urql/core')} (fetchExchange + subscriptionExchange over graphql-ws)`,
    async make(httpUrl, wsUrl, { on } = {}) {
      const ws = wsClient(wsUrl, on);
      const client = new UrqlClient({
        url: httpUrl,
        fetch,
        requestPolicy: 'network-only',
        exchanges: [
          subscriptionExchange({
            forwardSubscription(request) {
              const input = { ...request, query: request.query || '' };
              return { subscribe: (sink) => ({ unsubscribe: ws.subscribe(input, sink) }) };
            },
          }),
          fetchExchange,
        ],
      });
      return {
        async submit(input) {
          const r = await client.mutation(SUBMIT, { i: input }).toPromise();
          if (r.error) throw r.error;
          return r.data.submit.id;
        },
        subscribe(variables, sink) {
          let failed = false;
          const { unsubscribe } = pipe(
            client.subscription(EVENTS, variables),
            onEnd(() => { if (!failed) sink.complete(); }),
            wonkaSubscribe((r) => {
              if (r.error) { failed = true; sink.error(r.error.graphQLErrors?.length ? r.error.graphQLErrors : r.error); }
              else if (r.data) sink.next(r.data.submissionEvents);
            }),
          );
          return unsubscribe;
        },
        dispose: () => ws.dispose(),
      };
    },
  },
  {
    name: `graphql-request ${version('graphql-request')} (HTTP) + graphql-ws ${version('graphql-ws')}`,
    async make(httpUrl, wsUrl, { on } = {}) {
      const http = new GraphQLClient(httpUrl, { fetch });
      const ws = wsClient(wsUrl, on);
      return {
        async submit(input) {
          const r = await http.request(requestGql`${SUBMIT}`, { i: input });
          return r.submit.id;
        },
        subscribe: (variables, sink) =>
          ws.subscribe({ query: EVENTS, variables }, resultSink(sink)),
        dispose: () => ws.dispose(),
      };
    },
  },
];

/**
 * Watches one submission through `client` until it completes or fails, keeping
 * `variables.afterSeq` at the last seq seen and dropping events seen already.
 */
export function watch(client, id, { afterSeq = null } = {}) {
  const variables = { id, afterSeq };
  const w = {
    variables, events: [], duplicates: 0, errors: [], completed: false, firstAt: null, startedAt: Date.now(),
  };
  w.done = new Promise((res) => {
    w.unsubscribe = client.subscribe(variables, {
      next(ev) {
        w.firstAt ??= Date.now();
        const last = w.events.at(-1)?.seq ?? afterSeq ?? 0;
        if (ev.seq <= last) { w.duplicates += 1; return; }
        w.events.push(ev);
        variables.afterSeq = ev.seq;
      },
      error(e) { w.errors.push(e); res(w); },
      complete() { w.completed = true; res(w); },
    });
  });
  return w;
}
