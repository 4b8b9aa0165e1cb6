"""A local stand-in for the Knative RabbitMQ broker, routed by the same Trigger manifests.

One module per job:

- `engine`: the journal, the per-Trigger delivery queues, retries and dead letters
  (`LocalBroker`, usable in-process);
- `dispatch`: what each answer means, eventing-rabbitmq's dispatcher table;
- `journal`: the event journal and delivery log on disk (`BrokerState`);
- `routing`: Trigger manifests -> routes;
- `api`: the HTTP ingress and query API;
- `commands`: the CLI (`python -m geozarr_local.broker`, `geozarr-pipeline broker`).

The client that follows a run through the query API is `geozarr_pipeline.broker_client`.
"""
