"""The actor system: supervisor, one SessionActor per publisher session, one LlmActor per Llm,
a sweeper. Resources talk to it only through tether.actors.system.ActorSystem."""
