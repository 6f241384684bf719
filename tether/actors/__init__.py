"""The actor system: supervisor, one SessionActor per publisher session, one LlmActor per
virtual Llm (a PublicLlmActor per public one), a sweeper. Resources talk to it only through
tether.actors.system.ActorSystem."""
