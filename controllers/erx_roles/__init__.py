"""The three roles as thin rooms over the shared core: doctor (issuer), pharmacy (verifier and
dispenser) and the patient stand-in (holder, in place of a mobile wallet)."""
