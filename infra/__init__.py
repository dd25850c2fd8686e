"""The bottom layer: process infrastructure every app may use; imports no app of the hub."""
