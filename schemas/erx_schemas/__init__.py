"""The prescription credential: its AnonCreds schema, typed model, proof request and refusal reasons."""
