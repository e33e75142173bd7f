// Boots GraphiQL (vendored GraphiQL 4 on React 18, see web/vendor/) against this server.
//
// Queries and mutations are POSTed to /graphql with the headers pane's headers. Subscriptions
// go over a WebSocket to the same path (graphql-transport-ws), and the headers pane's headers
// are its `connection_init` payload, so `{"Authorization": "Bearer <token>"}` authenticates
// both: GraphiQL's own fetcher (@graphiql/toolkit, bundled in graphiql.min.js with graphql-ws)
// opens one graphql-ws client per subscription with
// `connectionParams: {...wsConnectionParams, ...headers}`.
//
// `?query=...` (and `?variables=...`) in the page's address open that operation in the editor.
// The headers are kept in localStorage (`graphiql:headers`), so a pasted token survives a reload.

const ENDPOINT = '/graphql';

const DEFAULT_QUERY = `# tickethold: temporary ticket holds over GraphQL.
#
# Paste your token in the Headers pane below:
#
#   {"Authorization": "Bearer <token>"}
#
# It goes with every query and mutation, and in the
# connection_init of the WebSocket of subscriptions.
# Run an operation with Ctrl-Enter or the run button.

query Catalog {
  events {
    id
    name
    ticketTypes {
      id
      name
      priceCents
      availability { available }
    }
  }
}

# As a buyer: hold two tickets for a minute...
mutation Hold {
  holdTickets(input: {
    eventId: "<event id>"
    items: [{ticketTypeId: "<ticket type id>", quantity: 2}]
    ttlSeconds: 60
  }) {
    id status expiresAt secondsLeft
  }
}

# ...and watch the hold count down until it ends.
subscription Countdown {
  holdCountdown(holdId: "<hold id>") {
    holdId status secondsLeft expiresAt
  }
}
`;

const { React, ReactDOM, GraphiQL } = globalThis;

const socketScheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
const fetcher = GraphiQL.createFetcher({
  url: ENDPOINT,
  subscriptionUrl: `${socketScheme}//${location.host}${ENDPOINT}`,
});

const params = new URLSearchParams(location.search);
const props = {
  fetcher,
  defaultQuery: DEFAULT_QUERY,
  shouldPersistHeaders: true,
  defaultEditorToolsVisibility: 'headers',
};
if (params.has('query')) props.query = params.get('query');
if (params.has('variables')) props.variables = params.get('variables');

ReactDOM.createRoot(document.getElementById('graphiql')).render(React.createElement(GraphiQL, props));
